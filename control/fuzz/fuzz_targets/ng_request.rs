//! Arbitrary bytes into the ng request parser, plus codec round trips of whatever decodes.
//!
//! Invariants checked beyond "no panic":
//! - every rejected datagram that has a cookie yields a reply that frames and decodes, with
//!   `result: error`, and one without a cookie yields no reply;
//! - every accepted request yields a reply that frames and decodes;
//! - bencode: `decode(encode(v)) == v.canonical()` and the encoding is a fixed point;
//! - JSON: whatever parses renders back to JSON that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtpedge_fuzz::ng::{self, Value, bencode, json, message, reply, rtpp_flags};

fn reply_decodes(datagram: &[u8], cookie: &[u8]) -> Value {
    let (c, body) = ng::split_cookie(datagram).expect("our reply frames");
    assert_eq!(c, cookie);
    let (v, _) = message::decode_body(body).expect("our reply decodes");
    v
}

fn bencode_round_trip(input: &[u8]) {
    if let Ok(v) = bencode::decode(input) {
        let encoded = v.to_bencode();
        let back = bencode::decode(&encoded).expect("re-decodes");
        assert_eq!(back, v.canonical());
        assert_eq!(back.to_bencode(), encoded);
    }
}

fuzz_target!(|data: &[u8]| {
    match ng::parse_request(data) {
        Ok(parsed) => {
            let body = reply::ok_with_warning(parsed.warnings.to_text().as_deref());
            let out = ng::encode_reply(&parsed.cookie, &body, parsed.encoding.is_json());
            let v = reply_decodes(&out, &parsed.cookie);
            assert_eq!(v.get_str("result"), Some("ok"));
        }
        Err(e) => match e.reply() {
            Some(out) => {
                let cookie = e.cookie.as_deref().expect("a reply needs a cookie");
                let v = reply_decodes(&out, cookie);
                assert_eq!(v.get_str("result"), Some("error"));
                assert!(v.get_str("error-reason").is_some());
            }
            None => assert!(e.cookie.is_none()),
        },
    }

    // The codecs on their own, on the whole input and on the body after the cookie.
    let body = data
        .iter()
        .position(|&b| b == b' ')
        .and_then(|i| data.get(i + 1..))
        .unwrap_or(data);
    bencode_round_trip(data);
    bencode_round_trip(body);
    if let Ok(v) = json::from_json(body) {
        let mut rendered = Vec::new();
        json::to_json(&v, &mut rendered);
        let back = json::from_json(&rendered).expect("our JSON parses");
        assert_eq!(back, v.canonical());
    }
    let _ = rtpp_flags::tokenise(data);
});
