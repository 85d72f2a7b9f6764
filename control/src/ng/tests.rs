//! Request-level tests: real datagrams as Kamailio sends them, every error path, spellings,
//! limits, JSON, and the client against an in-test UDP responder.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::bencode::{MAX_INPUT, encode};
use super::options::{MAX_FLAG_LEN, MAX_ID_LEN, MAX_LIST_ITEMS, MAX_RTPP_FLAGS_LEN, MAX_WARNINGS};
use super::*;

const SDP: &str = "v=0\r\no=- 1545997027 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n\
                   t=0 0\r\nm=audio 16000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n\
                   a=sendrecv\r\n";

/// A bencoded dictionary with keys in the given order (as Kamailio sends them: unsorted).
fn unsorted(pairs: &[(&str, Value)]) -> Vec<u8> {
    let mut out = vec![b'd'];
    for (k, v) in pairs {
        encode(&Value::from(*k), &mut out);
        encode(v, &mut out);
    }
    out.push(b'e');
    out
}

fn datagram(cookie: &str, body: &[u8]) -> Vec<u8> {
    [cookie.as_bytes(), b" ", body].concat()
}

fn strs(items: &[&str]) -> Value {
    Value::list(items.iter().copied())
}

fn parse_ok(dgram: &[u8]) -> ParsedRequest {
    match parse_request(dgram) {
        Ok(p) => p,
        Err(e) => panic!("{:?}: {e}", String::from_utf8_lossy(dgram)),
    }
}

fn parse_err(dgram: &[u8]) -> RequestError {
    match parse_request(dgram) {
        Ok(p) => panic!("{:?} parsed: {p:?}", String::from_utf8_lossy(dgram)),
        Err(e) => e,
    }
}

/// An offer body built from `base` pairs plus `extra` (later keys win).
fn offer_with(extra: &[(&str, Value)]) -> Vec<u8> {
    let mut pairs: Vec<(&str, Value)> = vec![
        ("command", "offer".into()),
        ("call-id", "c1".into()),
        ("from-tag", "f1".into()),
        ("sdp", SDP.into()),
    ];
    pairs.extend(extra.iter().cloned());
    datagram("ck", &unsorted(&pairs))
}

fn offer_options(extra: &[(&str, Value)]) -> (Options, Warnings) {
    let p = parse_ok(&offer_with(extra));
    match p.request {
        Request::Offer(o) => (o.options, p.warnings),
        other => panic!("not an offer: {other:?}"),
    }
}

/// Offer as Kamailio's module sends it with module-side flag parsing, for
/// `rtpengine_offer("via-branch=1 replace-origin replace-session-connection ICE=remove RTP/AVP
/// trust-address rtcp-mux-demux direction=external direction=internal address-family=IP4
/// label=caller TOS=184 loop-protect strict-source port-latching")` on an INVITE from
/// 203.0.113.7. Key order follows rtpp_function_call().
fn kamailio_offer(with_message_type: bool) -> Vec<u8> {
    let mut pairs: Vec<(&str, Value)> = vec![
        ("supports", strs(&["load limit"])),
        ("sdp", SDP.into()),
        ("ICE", "remove".into()),
        ("address-family", "IP4".into()),
        ("label", "caller".into()),
        ("TOS", Value::Int(184)),
        ("direction", strs(&["external", "internal"])),
        ("replace", strs(&["origin", "session-connection"])),
        ("transport-protocol", "RTP/AVP".into()),
        ("rtcp-mux", strs(&["demux"])),
        ("received-from", strs(&["IP4", "203.0.113.7"])),
        ("call-id", "a84b4c76e66710@pc33.example.com".into()),
        ("via-branch", "z9hG4bK776asdhds.0".into()),
        ("from-tag", "1928301774".into()),
        ("command", "offer".into()),
    ];
    if with_message_type {
        pairs.push(("sip-message-type", "sip_request".into()));
    }
    pairs.push((
        "flags",
        strs(&[
            "trust-address",
            "loop-protect",
            "strict-source",
            "port-latching",
        ]),
    ));
    datagram("0_1804289383_7", &unsorted(&pairs))
}

fn expected_kamailio_options() -> Options {
    Options {
        flags: Flags {
            strict_source: true,
            trust_address: Some(true),
            port_latching: true,
            loop_protect: true,
            ..Flags::default()
        },
        replace: Replace {
            origin: true,
            session_connection: true,
            ..Replace::default()
        },
        rtcp_mux: RtcpMux {
            demux: true,
            ..RtcpMux::default()
        },
        direction: Direction {
            from: Some("external".into()),
            to: Some("internal".into()),
        },
        ice: Some(Ice::Remove),
        transport_protocol: Some(TransportProtocol::RtpAvp),
        tos: Some(Tos::Value(184)),
        address_family: Some(AddressFamily::Ip4),
        received_from: Some(ReceivedFrom {
            family: Some(AddressFamily::Ip4),
            address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        }),
        supports_load_limit: true,
        label: Some("caller".into()),
        ..Options::default()
    }
}

#[test]
fn kamailio_module_parsed_offer() {
    for with_type in [false, true] {
        let p = parse_ok(&kamailio_offer(with_type));
        assert_eq!(p.cookie, b"0_1804289383_7");
        assert_eq!(p.encoding, Encoding::Bencode);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let mut expected = expected_kamailio_options();
        if with_type {
            expected.sip_message_type = Some(SipMessageType::Request);
        }
        assert_eq!(
            p.request,
            Request::Offer(Offer {
                call_id: "a84b4c76e66710@pc33.example.com".into(),
                from_tag: "1928301774".into(),
                to_tag: None,
                via_branch: Some("z9hG4bK776asdhds.0".into()),
                sdp: SDP.as_bytes().to_vec(),
                options: expected,
            })
        );
        assert_eq!(p.request.command(), Command::Offer);
        assert_eq!(p.request.call_id(), Some("a84b4c76e66710@pc33.example.com"));
    }
}

#[test]
fn kamailio_rtpp_flags_offer_types_the_same() {
    // Daemon-side parsing: Kamailio sends the flag string as `rtpp-flags`, last.
    let flags = "replace-origin replace-session-connection ICE=remove RTP/AVP trust-address \
                 rtcp-mux-demux direction=external direction=internal address-family=IP4 \
                 label=caller TOS=184 loop-protect strict-source port-latching via-branch=auto";
    let body = unsorted(&[
        ("supports", strs(&["load limit"])),
        ("sdp", SDP.into()),
        ("received-from", strs(&["IP4", "203.0.113.7"])),
        ("call-id", "a84b4c76e66710@pc33.example.com".into()),
        ("via-branch", "z9hG4bK776asdhds.0".into()),
        ("from-tag", "1928301774".into()),
        ("command", "offer".into()),
        ("sip-message-type", "sip_request".into()),
        ("rtpp-flags", flags.into()),
    ]);
    let p = parse_ok(&datagram("0_1804289383_8", &body));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let Request::Offer(offer) = p.request else {
        panic!("not an offer")
    };
    let mut expected = expected_kamailio_options();
    expected.sip_message_type = Some(SipMessageType::Request);
    assert_eq!(offer.options, expected);
    // `via-branch=auto` in rtpp-flags is Kamailio's selector, not a branch value.
    assert_eq!(offer.via_branch.as_deref(), Some("z9hG4bK776asdhds.0"));
}

#[test]
fn rtpp_flags_special_forms() {
    let (o, w) = offer_options(&[(
        "rtpp-flags",
        "SRTP AVPF internal external extra-dir to-tag=t9 from-tag=f9 account=acme-42 \
         delete-delay=5 media-address=2001:db8::1 rtcp-mux=[offer require] \
         replace=[origin username] ICE=[force trickle] supports=[load..limit] \
         codec-strip=PCMA codec-offer-G722 record-call=yes direction=[a b] \
         SIP-source-address via-branch=z9hG4bKreal x="
            .into(),
    )]);
    assert_eq!(o.transport_protocol, Some(TransportProtocol::RtpSavpf));
    assert_eq!(o.direction.from.as_deref(), Some("internal"));
    assert_eq!(o.direction.to.as_deref(), Some("external"));
    assert_eq!(o.account.as_deref(), Some("acme-42"));
    assert_eq!(o.delete_delay, Some(5));
    assert_eq!(o.media_address, Some("2001:db8::1".parse().unwrap()));
    assert!(o.rtcp_mux.offer && o.rtcp_mux.require && !o.rtcp_mux.demux);
    assert!(o.replace.origin && o.replace.username);
    assert_eq!(o.ice, Some(Ice::Force));
    assert!(o.flags.trickle_ice);
    assert!(o.flags.to_tag, "to-tag=x also sets the to-tag flag");
    assert!(o.flags.directional, "from-tag=x sets directional");
    assert!(o.flags.record_call);
    assert_eq!(o.flags.trust_address, Some(false));
    let text = w.to_text().unwrap();
    for needle in [
        "unknown flag \"extra-dir\"",
        "key \"codec-strip\" not supported",
        "flag \"codec-offer-G722\" not supported",
        "unknown value \"load..limit\" for \"supports\"",
        "more than two interfaces in \"direction\": \"a\"",
        "unknown flag \"x\"",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    let p = parse_ok(&offer_with(&[(
        "rtpp-flags",
        "to-tag=t9 from-tag=f9".into(),
    )]));
    let Request::Offer(offer) = p.request else {
        panic!()
    };
    assert_eq!(offer.to_tag.as_deref(), Some("t9"));
    assert_eq!(
        offer.from_tag, "f9",
        "rtpp-flags come after the dictionary key"
    );
    let p = parse_ok(&offer_with(&[(
        "rtpp-flags",
        "via-branch=z9hG4bKreal".into(),
    )]));
    let Request::Offer(offer) = p.request else {
        panic!()
    };
    assert_eq!(offer.via_branch.as_deref(), Some("z9hG4bKreal"));
}

#[test]
fn rtpp_flags_transport_combinations() {
    for (words, expected) in [
        ("RTP/AVP", Some(TransportProtocol::RtpAvp)),
        ("RTP/SAVP", Some(TransportProtocol::RtpSavp)),
        ("RTP/AVPF", Some(TransportProtocol::RtpAvpf)),
        ("RTP/SAVPF", Some(TransportProtocol::RtpSavpf)),
        ("UDP/TLS/RTP/SAVP", Some(TransportProtocol::UdpTlsRtpSavp)),
        ("UDP/TLS/RTP/SAVPF", Some(TransportProtocol::UdpTlsRtpSavpf)),
        ("SRTP", Some(TransportProtocol::RtpSavp)),
        ("AVPF", Some(TransportProtocol::RtpAvpf)),
        ("DTLS AVPF", Some(TransportProtocol::UdpTlsRtpSavpf)),
        ("RTP/SAVPF RTP", Some(TransportProtocol::RtpAvpf)),
        ("RTP/SAVPF AVP", Some(TransportProtocol::RtpSavp)),
        ("SRTP DTLS", None),
        ("rtp/avp", None), // transport words are case-sensitive, as in rtpengine
        (
            "transport-protocol=RTP/SAVP",
            Some(TransportProtocol::RtpSavp),
        ),
    ] {
        let (o, _) = offer_options(&[("rtpp-flags", words.into())]);
        assert_eq!(o.transport_protocol, expected, "{words}");
    }
}

#[test]
fn answer_delete_query_list_ping() {
    let body = unsorted(&[
        ("sdp", SDP.into()),
        ("call-id", "c1".into()),
        ("from-tag", "f1".into()),
        ("to-tag", "t1".into()),
        ("command", "answer".into()),
        ("transport protocol", "accept".into()),
    ]);
    let p = parse_ok(&datagram("1", &body));
    let Request::Answer(a) = p.request else {
        panic!()
    };
    assert_eq!((a.from_tag.as_str(), a.to_tag.as_str()), ("f1", "t1"));
    assert!(a.options.transport_accept);

    let body = unsorted(&[
        ("call-id", "c1".into()),
        ("from-tag", "f1".into()),
        ("command", "delete".into()),
        ("delete delay", Value::Int(0)),
        ("flags", strs(&["fatal", "all", "to-tag", "fast"])),
    ]);
    let p = parse_ok(&datagram("2", &body));
    let Request::Delete(d) = &p.request else {
        panic!()
    };
    assert_eq!(d.call_id, "c1");
    assert_eq!(d.from_tag.as_deref(), Some("f1"));
    assert_eq!(d.to_tag, None);
    assert_eq!(d.options.delete_delay, Some(0));
    let f = &d.options.flags;
    assert!(f.fatal && f.all && f.to_tag && f.fast);

    // Delete: only the call-id is required; a negative delay means "the default".
    let body = unsorted(&[
        ("command", "delete".into()),
        ("call-id", "c1".into()),
        ("delete-delay", Value::Int(-1)),
    ]);
    let Request::Delete(d) = parse_ok(&datagram("3", &body)).request else {
        panic!()
    };
    assert_eq!((d.from_tag, d.options.delete_delay), (None, None));

    let body = unsorted(&[
        ("command", "query".into()),
        ("call-id", "c1".into()),
        ("to-tag", "t1".into()),
    ]);
    assert_eq!(
        parse_ok(&datagram("4", &body)).request,
        Request::Query(Query {
            call_id: "c1".into(),
            from_tag: None,
            to_tag: Some("t1".into()),
            options: Options::default(),
        })
    );

    let list = |extra: &[(&str, Value)]| {
        let mut pairs = vec![("command", Value::from("list"))];
        pairs.extend(extra.iter().cloned());
        parse_request(&datagram("5", &unsorted(&pairs)))
    };
    assert_eq!(
        list(&[]).unwrap().request,
        Request::List(List { limit: 32 })
    );
    assert_eq!(
        list(&[("limit", Value::Int(5))]).unwrap().request,
        Request::List(List { limit: 5 })
    );
    assert_eq!(
        list(&[("limit", Value::Int(-1))]).unwrap_err().reason(),
        "invalid limit, must be >= 0"
    );

    // Ping ignores everything else.
    let p = parse_ok(b"5323_1 d7:command4:ping4:junkli1eee");
    assert_eq!(p.request, Request::Ping);
    assert!(p.warnings.is_empty());
}

#[test]
fn required_keys_in_rtpengine_order_with_its_messages() {
    let cases: &[(&[(&str, Value)], &str)] = &[
        (
            &[("command", "offer".into()), ("call-id", "c".into())],
            "No SDP body in message",
        ),
        (
            &[("command", "offer".into()), ("sdp", SDP.into())],
            "No call-id in message",
        ),
        (
            &[
                ("command", "offer".into()),
                ("sdp", SDP.into()),
                ("call-id", "c".into()),
            ],
            "No from-tag in message",
        ),
        (
            &[
                ("command", "answer".into()),
                ("sdp", SDP.into()),
                ("call-id", "c".into()),
                ("from-tag", "f".into()),
            ],
            "No to-tag in message",
        ),
        (
            &[
                ("command", "answer".into()),
                ("sdp", SDP.into()),
                ("call-id", "c".into()),
                ("from-tag", "f".into()),
                ("to-tag", "".into()),
            ],
            "No to-tag in message",
        ),
        (
            &[
                ("command", "offer".into()),
                ("sdp", "".into()),
                ("call-id", "c".into()),
            ],
            "No SDP body in message",
        ),
        (&[("command", "delete".into())], "No call-id in message"),
        (
            &[("command", "delete".into()), ("call-id", "".into())],
            "No call-id in message",
        ),
        (&[("command", "query".into())], "No call-id in message"),
    ];
    for (pairs, reason) in cases {
        let e = parse_err(&datagram("ck", &unsorted(pairs)));
        assert_eq!(e.reason(), *reason);
        assert!(matches!(e.kind, RequestErrorKind::Missing(_)));
        assert!(e.command.is_some());
        let expected = format!(
            "ck d12:error-reason{}:{reason}6:result5:errore",
            reason.len()
        );
        assert_eq!(e.reply().unwrap(), expected.into_bytes());
    }
}

#[test]
fn framing_and_command_errors() {
    // No cookie: nothing to answer.
    for dgram in [
        &b"d7:command4:pinge"[..],
        b" d7:command4:pinge",
        b"",
        b"nospace",
    ] {
        let e = parse_err(dgram);
        assert_eq!(e.kind, RequestErrorKind::NoCookie);
        assert_eq!(e.cookie, None);
        assert_eq!(e.reply(), None);
    }
    let long = datagram(&"x".repeat(300), b"d7:command4:pinge");
    let e = parse_err(&long);
    assert!(matches!(
        e.kind,
        RequestErrorKind::CookieTooLong { len: 300, .. }
    ));
    assert_eq!(e.reply(), None);

    let cases: &[(&[u8], &str)] = &[
        (b"ck ", "Invalid data (no payload)"),
        (b"ck x", "Invalid NG data format"),
        (b"ck [1]", "Invalid NG data format"),
        (
            b"ck d7:command4:ping",
            "Could not decode bencode dictionary: unexpected end of input at byte 16",
        ),
        (
            b"ck d7:command4:pingei1e",
            "Could not decode bencode dictionary: trailing data at byte 17",
        ),
        (
            b"ck di1e4:pinge",
            "Could not decode bencode dictionary: dictionary key at byte 1 is not a byte string",
        ),
        (b"ck de", "Dictionary contains no key \"command\""),
        (
            b"ck d4:spam4:eggse",
            "Dictionary contains no key \"command\"",
        ),
        (b"ck d7:command4:pinGe", "Unrecognized command \"pinG\""),
        (b"ck d7:command5:Offere", "Unrecognized command \"Offer\""),
        (
            b"ck d7:command15:start recordinge",
            "Unsupported command \"start recording\"",
        ),
        (
            b"ck d7:command10:block DTMFe",
            "Unsupported command \"block DTMF\"",
        ),
        (
            b"ck d7:commandli1eee",
            "Invalid type for key \"command\": expected string, got list",
        ),
    ];
    for (dgram, reason) in cases {
        let e = parse_err(dgram);
        assert_eq!(e.reason(), *reason, "{:?}", String::from_utf8_lossy(dgram));
        assert_eq!(e.cookie.as_deref(), Some(&b"ck"[..]));
        let reply = e.reply().unwrap();
        let (cookie, body) = split_cookie(&reply).unwrap();
        assert_eq!(cookie, b"ck");
        let v = decode(body).unwrap();
        assert_eq!(v.get_str("result"), Some("error"));
        assert_eq!(v.get_str("error-reason"), Some(*reason));
        assert_eq!(
            v.as_dict().unwrap().len(),
            2,
            "nothing else in an error reply"
        );
    }
    // Every rtpengine command is either served or a distinct "unsupported" error.
    for name in [
        "ping",
        "offer",
        "answer",
        "delete",
        "query",
        "list",
        "start recording",
        "stop recording",
        "pause recording",
        "start forwarding",
        "stop forwarding",
        "block DTMF",
        "unblock DTMF",
        "block media",
        "unblock media",
        "play media",
        "stop media",
        "play DTMF",
        "statistics",
        "silence media",
        "unsilence media",
        "publish",
        "subscribe request",
        "subscribe answer",
        "unsubscribe",
        "inject start",
        "inject stop",
        "connect",
        "cli",
        "CLI",
        "transform",
        "create",
        "create answer",
        "mesh",
    ] {
        assert_ne!(
            Command::lookup(name.as_bytes()),
            message::CommandLookup::Unknown,
            "{name}"
        );
    }
}

#[test]
fn every_key_of_the_wrong_type_is_an_error() {
    let list = Value::list(["x"]);
    let dict = Value::dict([("x", Value::Int(1))]);
    let int = Value::Int(7);
    let string_keys = [
        "call-id",
        "call id",
        "from-tag",
        "to-tag",
        "via-branch",
        "sdp",
        "transport-protocol",
        "address family",
        "media address",
        "account",
        "label",
        "from-label",
        "to-label",
        "from-interface",
        "to-interface",
        "sip-message-type",
        "record call",
        "all",
        "rtpp-flags",
    ];
    for key in string_keys {
        for bad in [&list, &dict, &int] {
            let e = parse_err(&offer_with(&[(key, bad.clone())]));
            assert_eq!(
                e.kind,
                RequestErrorKind::WrongType {
                    key: key.to_owned(),
                    expected: "string",
                    found: bad.type_name(),
                },
                "{key}"
            );
            assert_eq!(e.command, Some(Command::Offer));
            assert!(e.reply().is_some());
        }
    }
    let list_keys = [
        "flags",
        "replace",
        "rtcp-mux",
        "ICE",
        "supports",
        "direction",
    ];
    for key in list_keys {
        for bad in [&dict, &int] {
            let e = parse_err(&offer_with(&[(key, bad.clone())]));
            assert!(
                matches!(e.kind, RequestErrorKind::WrongType { key: ref k, .. } if k == key),
                "{key}: {e}"
            );
        }
        // A list holding a non-string.
        let e = parse_err(&offer_with(&[(key, Value::List(vec![Value::Int(1)]))]));
        assert!(
            matches!(
                e.kind,
                RequestErrorKind::WrongType {
                    found: "integer",
                    ..
                }
            ),
            "{key}: {e}"
        );
    }
    for key in ["TOS", "delete delay", "sip-code", "limit"] {
        for bad in [&list, &dict, &Value::from("abc")] {
            let e = parse_err(&offer_with(&[(key, bad.clone())]));
            assert!(
                matches!(
                    e.kind,
                    RequestErrorKind::WrongType {
                        expected: "integer",
                        ..
                    }
                ),
                "{key}: {e}"
            );
        }
    }
    for bad in [&int, &dict] {
        let e = parse_err(&offer_with(&[("received-from", bad.clone())]));
        assert!(matches!(e.kind, RequestErrorKind::WrongType { .. }), "{e}");
    }
    // Right type, unusable value.
    for bad in [
        strs(&["IP4"]),
        strs(&["IP4", "192.0.2.1", "x"]),
        strs(&["IP4", "not-an-address"]),
        strs(&["IP6", "192.0.2.1"]),
        Value::List(vec!["IP4".into(), Value::Int(1)]),
    ] {
        let e = parse_err(&offer_with(&[("received-from", bad)]));
        assert!(
            matches!(
                e.kind,
                RequestErrorKind::InvalidValue { .. } | RequestErrorKind::WrongType { .. }
            ),
            "{e}"
        );
    }
    let e = parse_err(&offer_with(&[("media address", "192.0.2.300".into())]));
    assert_eq!(
        e.reason(),
        "Invalid value for key \"media address\": \"192.0.2.300\" is not an IP address"
    );
    let e = parse_err(&offer_with(&[("call-id", Value::Bytes(vec![0xff, 0xfe]))]));
    assert_eq!(
        e.reason(),
        "Invalid value for key \"call-id\": not valid UTF-8"
    );
    let e = parse_err(&offer_with(&[("delete-delay", Value::Int(1 << 40))]));
    assert!(matches!(e.kind, RequestErrorKind::InvalidValue { .. }));
    let e = parse_err(&offer_with(&[("sip-code", Value::Int(-3))]));
    assert!(matches!(e.kind, RequestErrorKind::InvalidValue { .. }));
}

#[test]
fn values_that_parse_leniently() {
    // Comma-separated strings for list keys, as rtpengine accepts.
    let (o, w) = offer_options(&[
        ("flags", "trust address, strict-source".into()),
        ("replace", "origin,session name".into()),
        ("ICE", "force-relay".into()),
        ("direction", "pub".into()),
        ("TOS", "46".into()),
        ("received from", "2001:db8::7".into()),
        ("media-address", "[2001:db8::8]".into()),
    ]);
    assert!(w.is_empty(), "{w:?}");
    assert!(o.flags.strict_source);
    assert_eq!(o.flags.trust_address, Some(true));
    assert!(o.replace.origin && o.replace.session_name);
    assert_eq!(o.ice, Some(Ice::ForceRelay));
    assert_eq!(o.direction.from.as_deref(), Some("pub"));
    assert_eq!(o.tos, Some(Tos::Value(46)));
    assert_eq!(
        o.received_from,
        Some(ReceivedFrom {
            family: None,
            address: "2001:db8::7".parse().unwrap()
        })
    );
    assert_eq!(o.media_address, Some("2001:db8::8".parse().unwrap()));
    // TOS semantics.
    assert_eq!(
        offer_options(&[("TOS", Value::Int(-1))]).0.tos,
        Some(Tos::Keep)
    );
    assert_eq!(
        offer_options(&[("TOS", Value::Int(256))]).0.tos,
        Some(Tos::Reset)
    );
    assert_eq!(
        offer_options(&[("TOS", Value::Int(0))]).0.tos,
        Some(Tos::Value(0))
    );
    // Unknown received-from family: kept the address, warned.
    let (o, w) = offer_options(&[("received-from", strs(&["?", "192.0.2.1"]))]);
    assert_eq!(o.received_from.unwrap().family, None);
    assert_eq!(w.as_slice().len(), 1);
}

/// A predicate on parsed options.
type Check = fn(&Options) -> bool;

#[test]
fn three_spellings_and_any_case() {
    let flag_spellings: &[(&[&str], Check)] = &[
        (
            &[
                "strict source",
                "strict-source",
                "strict_source",
                "Strict-Source",
            ],
            |o| o.flags.strict_source,
        ),
        (
            &[
                "trust address",
                "trust-address",
                "trust_address",
                "TRUST ADDRESS",
            ],
            |o| o.flags.trust_address == Some(true),
        ),
        (
            &[
                "SIP source address",
                "SIP-source-address",
                "sip_source_address",
                "sip source address",
            ],
            |o| o.flags.trust_address == Some(false),
        ),
        (&["port latching", "port-latching", "port_latching"], |o| {
            o.flags.port_latching
        }),
        (
            &["media handover", "media-handover", "media_handover"],
            |o| o.flags.media_handover,
        ),
        (
            &[
                "no rtcp attribute",
                "no-RTCP-attribute",
                "no_rtcp_attribute",
            ],
            |o| o.flags.no_rtcp_attribute,
        ),
        (
            &[
                "full rtcp attribute",
                "full-rtcp-attribute",
                "full_RTCP_attribute",
            ],
            |o| o.flags.full_rtcp_attribute,
        ),
        (&["loop protect", "loop-protect", "loop_protect"], |o| {
            o.flags.loop_protect
        }),
        (&["symmetric", "Symmetric"], |o| o.flags.symmetric),
        (&["asymmetric", "ASYMMETRIC"], |o| o.flags.asymmetric),
        (&["all", "ALL"], |o| o.flags.all),
        (&["record call", "record-call", "record_call"], |o| {
            o.flags.record_call
        }),
        (&["reject ICE", "reject-ice", "ICE_reject"], |o| {
            o.flags.reject_ice
        }),
        (
            &["replace-origin", "replace_origin", "Replace-Origin"],
            |o| o.replace.origin,
        ),
        (
            &[
                "replace-session-connection",
                "replace-session_connection",
                "replace_session connection",
            ],
            |o| o.replace.session_connection,
        ),
        (
            &["rtcp-mux-demux", "rtcp_mux_demux", "RTCP-mux-demux"],
            |o| o.rtcp_mux.demux,
        ),
    ];
    for (spellings, check) in flag_spellings {
        for s in *spellings {
            let (o, _) = offer_options(&[("flags", strs(&[s]))]);
            assert!(check(&o), "flag {s:?}");
            // The same word in rtpp-flags (spaces are separators there, so only the
            // hyphen/underscore spellings apply).
            if !s.contains(' ') {
                let (o, _) = offer_options(&[("rtpp-flags", (*s).into())]);
                assert!(check(&o), "rtpp-flags {s:?}");
            }
        }
    }
    let key_spellings: &[(&[&str], Value, Check)] = &[
        (
            &[
                "delete delay",
                "delete-delay",
                "delete_delay",
                "Delete-Delay",
            ],
            Value::Int(3),
            |o| o.delete_delay == Some(3),
        ),
        (
            &[
                "transport protocol",
                "transport-protocol",
                "transport_protocol",
            ],
            "RTP/SAVP".into(),
            |o| o.transport_protocol == Some(TransportProtocol::RtpSavp),
        ),
        (
            &["rtcp-mux", "rtcp mux", "rtcp_mux", "RTCP-mux"],
            strs(&["accept"]),
            |o| o.rtcp_mux.accept,
        ),
        (
            &["address family", "address-family", "address_family"],
            "ip6".into(),
            |o| o.address_family == Some(AddressFamily::Ip6),
        ),
        (
            &["media address", "media-address", "media_address"],
            "192.0.2.9".into(),
            |o| o.media_address == Some("192.0.2.9".parse().unwrap()),
        ),
        (
            &["received from", "received-from", "received_from"],
            strs(&["IP4", "192.0.2.9"]),
            |o| o.received_from.is_some(),
        ),
        (&["ICE", "ice", "Ice"], "remove".into(), |o| {
            o.ice == Some(Ice::Remove)
        }),
        (&["TOS", "tos"], Value::Int(1), |o| {
            o.tos == Some(Tos::Value(1))
        }),
        (
            &["from-label", "from label", "label", "from_label"],
            "l".into(),
            |o| o.label.as_deref() == Some("l"),
        ),
        (
            &["SIP message type", "sip-message-type", "sip_message_type"],
            "SIP reply".into(),
            |o| o.sip_message_type == Some(SipMessageType::Reply),
        ),
        (&["supports"], strs(&["load limit"]), |o| {
            o.supports_load_limit
        }),
    ];
    for (spellings, value, check) in key_spellings {
        for s in *spellings {
            let (o, w) = offer_options(&[(s, value.clone())]);
            assert!(check(&o), "key {s:?}");
            assert!(w.is_empty(), "{s}: {w:?}");
        }
    }
    for s in ["call-id", "call id", "call_id", "Call-ID"] {
        let body = unsorted(&[("command", "delete".into()), (s, "abc".into())]);
        let Request::Delete(d) = parse_ok(&datagram("x", &body)).request else {
            panic!()
        };
        assert_eq!(d.call_id, "abc", "{s}");
    }
}

#[test]
fn warnings_for_unknown_and_unsupported() {
    let (_, w) = offer_options(&[
        ("x-custom", "1".into()),
        ("codec", Value::dict([("strip", strs(&["PCMA"]))])),
        ("DTLS", "passive".into()),
        (
            "flags",
            strs(&[
                "frobnicate",
                "record-call",
                "generate-mid",
                "codec-strip-PCMU",
            ]),
        ),
        ("ICE", strs(&["lite-both", "bogus"])),
        ("replace", strs(&["nothing"])),
        ("rtcp-mux", strs(&["maybe"])),
        ("transport-protocol", "RTP/XYZ".into()),
        ("address family", "IP5".into()),
        ("record call", "yes".into()),
        ("all", "flows".into()),
    ]);
    let got: Vec<String> = w.as_slice().iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "unknown key \"x-custom\" ignored",
            "key \"codec\" not supported, ignored",
            "key \"DTLS\" not supported, ignored",
            "unknown flag \"frobnicate\" ignored",
            "flag \"record-call\" not supported, ignored",
            "flag \"generate-mid\" not supported, ignored",
            "flag \"codec-strip-PCMU\" not supported, ignored",
            "value \"lite-both\" for \"ICE\" not supported, ignored",
            "unknown value \"bogus\" for \"ICE\" ignored",
            "unknown value \"nothing\" for \"replace\" ignored",
            "unknown value \"maybe\" for \"rtcp-mux\" ignored",
            "unknown value \"RTP/XYZ\" for \"transport-protocol\" ignored",
            "unknown value \"IP5\" for \"address family\" ignored",
            "key \"record call\" not supported, ignored",
            "value \"flows\" for \"all\" not supported, ignored",
        ]
    );
    assert_eq!(w.to_text().unwrap(), got.join("; "));

    // Bounded: a flood of unknown flags keeps MAX_WARNINGS and counts the rest.
    let many: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (_, w) = offer_options(&[("flags", strs(&many))]);
    assert_eq!(w.as_slice().len(), MAX_WARNINGS);
    assert_eq!(w.dropped(), 100 - MAX_WARNINGS);
    assert!(w.to_text().unwrap().ends_with("; and 68 more"));
}

#[test]
fn duplicate_keys_last_wins_lists_accumulate() {
    let p = parse_ok(&offer_with(&[
        ("call-id", "second".into()),
        ("flags", strs(&["strict-source"])),
        ("flags", strs(&["loop-protect"])),
        ("label", "a".into()),
        ("label", "b".into()),
    ]));
    let Request::Offer(o) = p.request else {
        panic!()
    };
    assert_eq!(o.call_id, "second");
    assert!(o.options.flags.strict_source && o.options.flags.loop_protect);
    assert_eq!(o.options.label.as_deref(), Some("b"));
    // trust address vs SIP source address: the later one wins.
    let (o, _) = offer_options(&[("flags", strs(&["trust-address", "SIP-source-address"]))]);
    assert_eq!(o.flags.trust_address, Some(false));
    let (o, _) = offer_options(&[("flags", strs(&["SIP-source-address", "trust-address"]))]);
    assert_eq!(o.flags.trust_address, Some(true));
}

#[test]
fn truncated_at_every_length() {
    for full in [
        kamailio_offer(true),
        offer_with(&[("rtpp-flags", "RTP/AVP".into())]),
    ] {
        let space = full.iter().position(|&b| b == b' ').unwrap();
        for len in 0..full.len() {
            let e = parse_err(&full[..len]);
            if len <= space {
                assert_eq!(e.kind, RequestErrorKind::NoCookie, "len {len}");
            } else if len == space + 1 {
                assert_eq!(e.kind, RequestErrorKind::NoPayload);
            } else {
                assert!(
                    matches!(e.kind, RequestErrorKind::Bencode(_)),
                    "len {len}: {e}"
                );
                assert_eq!(e.cookie.as_deref(), Some(&full[..space]));
                assert!(e.reply().is_some());
            }
        }
        assert!(parse_request(&full).is_ok());
    }
}

#[test]
fn huge_values_are_refused() {
    let e = parse_err(&offer_with(&[(
        "call-id",
        "x".repeat(MAX_ID_LEN + 1).into(),
    )]));
    assert_eq!(
        e.reason(),
        format!(
            "Value of key \"call-id\" too long ({} bytes, limit {MAX_ID_LEN})",
            MAX_ID_LEN + 1
        )
    );
    assert!(parse_request(&offer_with(&[("call-id", "x".repeat(MAX_ID_LEN).into())])).is_ok());
    let e = parse_err(&offer_with(&[(
        "flags",
        strs(&[&"f".repeat(MAX_FLAG_LEN + 1)]),
    )]));
    assert!(matches!(e.kind, RequestErrorKind::ValueTooLong { .. }));
    let e = parse_err(&offer_with(&[(
        "rtpp-flags",
        "f".repeat(MAX_FLAG_LEN + 1).into(),
    )]));
    assert!(
        matches!(e.kind, RequestErrorKind::ValueTooLong { .. }),
        "{e}"
    );
    let items: Vec<Value> = (0..=MAX_LIST_ITEMS).map(|_| Value::from("x")).collect();
    let e = parse_err(&offer_with(&[("flags", Value::List(items))]));
    assert_eq!(
        e.reason(),
        format!("Too many items in key \"flags\" (limit {MAX_LIST_ITEMS})")
    );
    let e = parse_err(&offer_with(&[(
        "flags",
        vec!["x"; MAX_LIST_ITEMS + 1].join(",").into(),
    )]));
    assert!(matches!(e.kind, RequestErrorKind::TooManyItems { .. }));
    let e = parse_err(&offer_with(&[(
        "rtpp-flags",
        "x ".repeat(MAX_RTPP_FLAGS_LEN).into(),
    )]));
    assert!(matches!(e.kind, RequestErrorKind::ValueTooLong { .. }));
    // rtpp-flags inside rtpp-flags is not followed (no recursion on hostile input).
    let nested = "rtpp-flags=".repeat(MAX_RTPP_FLAGS_LEN / 12) + "strict-source";
    let (o, w) = offer_options(&[("rtpp-flags", nested.into())]);
    assert!(!o.flags.strict_source);
    assert_eq!(w.as_slice().len(), 1);
    let e = parse_err(&offer_with(&[("rtpp-flags", "x=[[[[[[[[[[".into())]));
    assert!(
        matches!(e.kind, RequestErrorKind::InvalidValue { .. }),
        "{e}"
    );
    // A big SDP is fine as long as the datagram fits.
    let big_sdp = format!("{SDP}{}", "a=x\r\n".repeat(10_000));
    assert!(parse_request(&offer_with(&[("sdp", big_sdp.into())])).is_ok());
    let too_big = offer_with(&[("sdp", "a".repeat(MAX_INPUT).into())]);
    let e = parse_err(&too_big);
    assert!(matches!(
        e.kind,
        RequestErrorKind::Bencode(DecodeError::TooLarge { .. })
    ));
    // A long key is quoted shortened in the warning.
    let long_key = "k".repeat(1000);
    let (_, w) = offer_options(&[(&long_key, "v".into())]);
    assert!(w.to_text().unwrap().len() < 100);
}

#[test]
fn json_requests_and_replies() {
    let body = format!(
        r#"{{"command":"offer","call-id":"cfBXzDSZqhYNcXM","from-tag":"mS9rSAn0Cr",
            "sdp":{sdp},"via-branch":"5KiTRPZHH1nL6","flags":["trust address"],
            "replace":["origin"],"address family":"IP6","received-from":["IP4","10.65.31.43"],
            "ICE":"force","transport protocol":"RTP/SAVPF","media address":"2001:d8::6f24:65b",
            "DTLS":"passive","TOS":184,"supports":["load limit"]}}"#,
        sdp = serde_json::to_string(SDP).unwrap()
    );
    let p = parse_ok(&datagram("j1", body.as_bytes()));
    assert_eq!(p.encoding, Encoding::Json);
    let Request::Offer(o) = p.request else {
        panic!()
    };
    assert_eq!(o.sdp, SDP.as_bytes());
    assert_eq!(o.options.flags.trust_address, Some(true));
    assert_eq!(o.options.ice, Some(Ice::Force));
    assert_eq!(
        o.options.transport_protocol,
        Some(TransportProtocol::RtpSavpf)
    );
    assert_eq!(o.options.address_family, Some(AddressFamily::Ip6));
    assert_eq!(o.options.tos, Some(Tos::Value(184)));
    assert_eq!(
        p.warnings.to_text().as_deref(),
        Some("key \"DTLS\" not supported, ignored")
    );
    // Replies in JSON.
    let reply = encode_reply(
        &p.cookie,
        &reply::ok().with("sdp", SDP),
        p.encoding.is_json(),
    );
    assert!(reply.starts_with(br#"j1 {"result":"ok","sdp":"v=0\r\n"#));
    // Errors in JSON, for JSON requests, even when the JSON is broken.
    let e = parse_err(br#"j2 {"command":"delete"}"#);
    assert_eq!(
        e.reply().unwrap(),
        br#"j2 {"error-reason":"No call-id in message","result":"error"}"#
    );
    let e = parse_err(br#"j3 {"command":"#);
    assert_eq!(e.encoding, Encoding::Json);
    assert!(
        e.reason()
            .starts_with("Failed to parse JSON document: invalid JSON at line 1")
    );
    assert!(e.reply().unwrap().starts_with(br#"j3 {"error-reason":"#));
    let e = parse_err(br#"j4 {"command":"ping","x":null}"#);
    assert!(matches!(e.kind, RequestErrorKind::Json(_)));
    // Booleans read as integers, as in rtpengine.
    let p = parse_ok(br#"j5 {"command":"list","limit":true}"#);
    assert_eq!(p.request, Request::List(List { limit: 1 }));
    let p = parse_ok(br#"j6 {"command":"ping"}"#);
    assert_eq!(
        encode_reply(&p.cookie, &reply::pong(), true),
        br#"j6 {"result":"pong"}"#
    );
}

// ---- client ----

/// A UDP responder on loopback running `behaviour` for each datagram it receives; returns the
/// address and a counter of datagrams received.
fn responder<F>(ip: IpAddr, mut behaviour: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: FnMut(usize, &UdpSocket, &[u8], SocketAddr) -> bool + Send + 'static,
{
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            if !behaviour(n, &socket, &buf[..len], from) {
                break;
            }
        }
    });
    (addr, count)
}

/// A minimal ng server: parse, "execute" (counted), reply, cache by cookie.
fn serve(
    executed: Arc<AtomicUsize>,
    mut drop_reply: impl FnMut(usize) -> bool + Send + 'static,
) -> impl FnMut(usize, &UdpSocket, &[u8], SocketAddr) -> bool + Send + 'static {
    let mut cache = ReplyCache::default();
    move |n, socket, dgram, from| {
        let now = Instant::now();
        let Ok((cookie, _)) = split_cookie(dgram) else {
            return true;
        };
        let reply = match cache.get(cookie, now) {
            Some(cached) => cached.to_vec(),
            None => {
                let reply = match parse_request(dgram) {
                    Ok(p) => {
                        executed.fetch_add(1, Ordering::SeqCst);
                        let body = match &p.request {
                            Request::Ping => reply::pong(),
                            Request::Offer(o) => reply::ok().with("sdp", o.sdp.clone()),
                            Request::List(_) => reply::ok().with("calls", Value::list(["c1"])),
                            _ => reply::ok(),
                        };
                        let mut body = body;
                        reply::add_warning(&mut body, p.warnings.to_text().as_deref());
                        encode_reply(&p.cookie, &body, p.encoding.is_json())
                    }
                    Err(e) => match e.reply() {
                        Some(r) => r,
                        None => return true,
                    },
                };
                cache.insert(cookie, reply.clone(), now);
                reply
            }
        };
        if !drop_reply(n) {
            socket.send_to(&reply, from).unwrap();
        }
        true
    }
}

fn fast_client(addr: SocketAddr) -> NgClient {
    NgClient::new(addr)
        .unwrap()
        .with_timeout(Duration::from_millis(200))
        .with_attempts(3)
}

#[test]
fn client_request_helpers() {
    let executed = Arc::new(AtomicUsize::new(0));
    let (addr, _) = responder(
        Ipv4Addr::LOCALHOST.into(),
        serve(executed.clone(), |_| false),
    );
    let client = fast_client(addr);
    client.ping().unwrap();
    let reply = client
        .offer(
            "c1",
            "f1",
            SDP.as_bytes(),
            &[("flags", strs(&["trust-address", "bogus"]))],
        )
        .unwrap();
    assert_eq!(reply.get_bytes("sdp"), Some(SDP.as_bytes()));
    assert_eq!(
        reply.get_str("warning"),
        Some("unknown flag \"bogus\" ignored")
    );
    client
        .answer("c1", "f1", "t1", SDP.as_bytes(), &[])
        .unwrap();
    client.query("c1", Some("f1"), None).unwrap();
    client
        .delete("c1", None, None, &[("flags", strs(&["fatal"]))])
        .unwrap();
    assert_eq!(client.list(Some(3)).unwrap(), vec!["c1".to_owned()]);
    match client.delete("", None, None, &[]) {
        Err(ClientError::Error { reason, .. }) => assert_eq!(reason, "No call-id in message"),
        other => panic!("{other:?}"),
    }
    match client.request_expecting(Value::dict([("command", "ping".into())]), "ok") {
        Err(ClientError::UnexpectedResult { result, .. }) => {
            assert_eq!(result.as_deref(), Some("pong"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        executed.load(Ordering::SeqCst),
        7,
        "the invalid delete is not executed"
    );
}

#[test]
fn client_retransmits_and_server_replays_from_cache() {
    // The first reply is "lost": the client retransmits the same cookie, the server answers
    // from its cache without executing again.
    let executed = Arc::new(AtomicUsize::new(0));
    let (addr, received) = responder(
        Ipv4Addr::LOCALHOST.into(),
        serve(executed.clone(), |n| n == 0),
    );
    let client = fast_client(addr);
    let reply = client.offer("c1", "f1", SDP.as_bytes(), &[]).unwrap();
    assert_eq!(reply.get_str("result"), Some("ok"));
    assert_eq!(received.load(Ordering::SeqCst), 2, "one retransmission");
    assert_eq!(executed.load(Ordering::SeqCst), 1, "executed once");
}

#[test]
fn client_survives_a_lost_request() {
    // The first datagram is dropped on the way in.
    let executed = Arc::new(AtomicUsize::new(0));
    let mut serve = serve(executed.clone(), |_| false);
    let (addr, received) = responder(Ipv4Addr::LOCALHOST.into(), move |n, s, d, f| {
        n == 0 || serve(n, s, d, f)
    });
    fast_client(addr).ping().unwrap();
    assert_eq!(received.load(Ordering::SeqCst), 2);
    assert_eq!(executed.load(Ordering::SeqCst), 1);
}

#[test]
fn client_ignores_stray_replies() {
    let (addr, _) = responder(Ipv4Addr::LOCALHOST.into(), |_, socket, dgram, from| {
        let (cookie, _) = split_cookie(dgram).unwrap();
        // A reply to someone else's cookie, a cookie that is a prefix of ours, garbage, and
        // then the real one.
        socket.send_to(b"other_1 d6:result4:ponge", from).unwrap();
        let mut prefix = cookie[..cookie.len() - 1].to_vec();
        prefix.extend_from_slice(b" d6:result5:errore");
        socket.send_to(&prefix, from).unwrap();
        socket.send_to(b"\x00\x01garbage", from).unwrap();
        socket
            .send_to(&encode_reply(cookie, &reply::pong(), false), from)
            .unwrap();
        true
    });
    let client = fast_client(addr);
    // A datagram from an unrelated socket is filtered (the client's socket is connected).
    let intruder = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let me = client.local_addr().unwrap();
    intruder
        .send_to(b"x d6:result4:ponge", (Ipv4Addr::LOCALHOST, me.port()))
        .unwrap();
    for _ in 0..3 {
        client.ping().unwrap();
    }
}

#[test]
fn client_times_out_and_reports_malformed_replies() {
    let (addr, received) = responder(Ipv4Addr::LOCALHOST.into(), |_, _, _, _| true);
    let client = NgClient::new(addr)
        .unwrap()
        .with_timeout(Duration::from_millis(50))
        .with_attempts(2);
    let start = Instant::now();
    match client.ping() {
        Err(ClientError::Timeout { attempts: 2 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
    // Both transmissions reached the responder (it counts asynchronously).
    let deadline = Instant::now() + Duration::from_secs(2);
    while received.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(received.load(Ordering::SeqCst), 2);

    let (addr, _) = responder(Ipv4Addr::LOCALHOST.into(), |_, socket, dgram, from| {
        let (cookie, _) = split_cookie(dgram).unwrap();
        socket
            .send_to(&[cookie, b" d6:result"].concat(), from)
            .unwrap();
        true
    });
    match fast_client(addr).ping() {
        Err(ClientError::Malformed(m)) => assert!(m.contains("unexpected end"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Nobody listening: ICMP unreachable is treated as loss, then timeout.
    let closed = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let client = NgClient::new(addr)
        .unwrap()
        .with_timeout(Duration::from_millis(30))
        .with_attempts(2);
    assert!(matches!(client.ping(), Err(ClientError::Timeout { .. })));
}

#[test]
fn client_load_limit_and_ipv6() {
    let (addr, _) = responder(Ipv4Addr::LOCALHOST.into(), |_, socket, dgram, from| {
        let (cookie, _) = split_cookie(dgram).unwrap();
        let r = reply::overload(true, Some("CPU usage limit exceeded"));
        socket
            .send_to(&encode_reply(cookie, &r, false), from)
            .unwrap();
        true
    });
    match fast_client(addr).offer("c", "f", SDP.as_bytes(), &[]) {
        Err(ClientError::LoadLimit { message }) => {
            assert_eq!(message.as_deref(), Some("CPU usage limit exceeded"));
        }
        other => panic!("{other:?}"),
    }
    // IPv6 loopback, where the host has it.
    if UdpSocket::bind("[::1]:0").is_ok() {
        let executed = Arc::new(AtomicUsize::new(0));
        let (addr, _) = responder("::1".parse().unwrap(), serve(executed, |_| false));
        let client = fast_client(addr);
        assert!(client.local_addr().unwrap().is_ipv6());
        client.ping().unwrap();
    }
}

#[test]
fn cookies_are_unique() {
    let a = NgClient::new("127.0.0.1:9").unwrap();
    let b = NgClient::new("127.0.0.1:9").unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        assert!(seen.insert(a.next_cookie()));
        assert!(seen.insert(b.next_cookie()));
    }
    for c in &seen {
        assert!(!c.contains(' ') && c.len() < 64, "{c}");
    }
}

#[test]
fn service_is_an_rtpedge_command_with_untyped_keys() {
    let body = unsorted(&[
        ("command", "service".into()),
        ("call-id", "c1".into()),
        ("ticket", "t.s".into()),
        ("recorder", "192.0.2.9:4000".into()),
    ]);
    let p = parse_ok(&datagram("1", &body));
    let Request::Service(s) = p.request else {
        panic!("{:?}", p.request)
    };
    assert_eq!(s.call_id, "c1");
    assert_eq!(s.params.get_str("ticket"), Some("t.s"));
    assert_eq!(s.params.get_str("recorder"), Some("192.0.2.9:4000"));
    assert_eq!(s.params.get("command"), None);
    // call-id is required.
    let body = unsorted(&[("command", "service".into())]);
    assert!(parse_request(&datagram("2", &body)).is_err());
}
