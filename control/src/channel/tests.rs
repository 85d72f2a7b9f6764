//! Unit tests: frame parsing (including a fuzz-style property test), the CONNECT handshake
//! shapes, and the sans-IO session in virtual time.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{
    frame::{Body, Frame, FrameError, FrameType, MAX_SEQ, SessionId},
    handshake::{ConnectRequest, ConnectResponse, ResumeRequest},
    session::{
        Inbound, ProtocolError, ResumeRefused, SendError, Session, SessionConfig, WindowBounds,
    },
};

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("valid test id")
}

fn err(text: &str) -> FrameError {
    Frame::parse(text).expect_err("must be refused").error
}

// ---------------------------------------------------------------------------------------------
// Frames

#[test]
fn frame_round_trips_every_type() {
    let mut req = Frame::with_body(
        FrameType::Request,
        Body::new("billing", "RESERVE", json!({"call": "c1", "seconds": 60})),
    );
    req.session = Some(sid("abc"));
    req.seq = Some(7);
    req.ack = Some(3);
    let mut resp = Frame::with_body(
        FrameType::Response,
        Body::new("billing", "GRANT", json!({"seconds": 60})).with_code(200, "ok"),
    );
    resp.seq = Some(4);
    resp.correlation = Some(7);
    let mut ack = Frame::new(FrameType::Ack);
    ack.ack = Some(9);
    let mut error = Frame::error(400, "bad");
    error.seq = Some(5);
    error.correlation = Some(2);
    let mut msg = Frame::with_body(FrameType::Message, Body::new("call", "NOTIFY", Value::Null));
    msg.seq = Some(1);
    for f in [req, resp, ack, error, msg] {
        let text = f.encode();
        assert_eq!(Frame::parse(&text).as_ref(), Ok(&f), "{text}");
        // serde's Deserialize goes through the same validation.
        let via_serde: Frame = serde_json::from_str(&text).expect("serde");
        assert_eq!(via_serde, f);
    }
}

#[test]
fn frame_encoding_omits_absent_headers() {
    let mut ack = Frame::new(FrameType::Ack);
    ack.ack = Some(3);
    assert_eq!(ack.encode(), r#"{"type":"ack","ack":3}"#);
}

#[test]
fn frame_errors_name_the_field_and_the_problem() {
    assert!(matches!(err("{"), FrameError::Json(_)));
    assert_eq!(err("[1,2]"), FrameError::NotObject("an array"));
    assert_eq!(
        err(r#"{"seq":1}"#).to_string(),
        "field `type` is missing; one of request, response, message, ack, error"
    );
    assert_eq!(
        err(r#"{"type":5}"#).to_string(),
        "field `type`: expected a string, got number 5"
    );
    assert_eq!(
        err(r#"{"type":"messag","seq":1}"#).to_string(),
        "field `type`: unknown frame type \"messag\"; expected request, response, message, ack or error"
    );
    assert_eq!(
        err(r#"{"type":"message","seq":"x","package":"p","action":"A"}"#).to_string(),
        "field `seq`: expected an integer from 1 to 2^53-1, got string \"x\""
    );
    assert_eq!(
        err(r#"{"type":"message","seq":0,"package":"p","action":"A"}"#).to_string(),
        "field `seq`: 0 is not an integer from 1 to 2^53-1"
    );
    assert!(
        err(r#"{"type":"message","seq":-3,"package":"p","action":"A"}"#)
            .to_string()
            .starts_with("field `seq`: -3 is not")
    );
    assert!(
        err(r#"{"type":"message","seq":1.5,"package":"p","action":"A"}"#)
            .to_string()
            .starts_with("field `seq`: 1.5 is not")
    );
    let too_big = format!(
        r#"{{"type":"message","seq":{},"package":"p","action":"A"}}"#,
        MAX_SEQ + 1
    );
    assert!(matches!(
        err(&too_big),
        FrameError::Invalid { field: "seq", .. }
    ));
    assert_eq!(
        err(r#"{"type":"ack","ack":1,"seq":2}"#).to_string(),
        "field `seq` is not allowed on ack frames"
    );
    assert!(matches!(
        err(r#"{"type":"ack"}"#),
        FrameError::Missing { field: "ack", .. }
    ));
    assert!(matches!(
        err(r#"{"type":"request","seq":1,"package":"billing"}"#),
        FrameError::Missing {
            field: "action",
            ..
        }
    ));
    assert!(matches!(
        err(r#"{"type":"response","seq":1}"#),
        FrameError::Missing {
            field: "correlation",
            ..
        }
    ));
    assert!(matches!(
        err(r#"{"type":"error","seq":1}"#),
        FrameError::Missing { field: "code", .. }
    ));
    assert!(matches!(
        err(r#"{"type":"error","seq":1,"code":99}"#),
        FrameError::Invalid { field: "code", .. }
    ));
    assert!(matches!(
        err(r#"{"type":"ack","ack":1,"session":"a b"}"#),
        FrameError::Invalid {
            field: "session",
            ..
        }
    ));
    let long = "x".repeat(65);
    assert!(matches!(
        err(&format!(
            r#"{{"type":"message","seq":1,"package":"{long}","action":"A"}}"#
        )),
        FrameError::Invalid {
            field: "package",
            ..
        }
    ));
    assert_eq!(
        err(r#"{"type":"message","seq":1,"package":"p","action":"A","reason":7}"#).to_string(),
        "field `reason`: expected a string, got number 7"
    );
}

#[test]
fn malformed_frames_keep_their_seq_when_readable() {
    let m = Frame::parse(r#"{"type":"bogus","seq":4}"#).expect_err("bad type");
    assert_eq!(m.seq, Some(4));
    let m = Frame::parse(r#"{"type":"message","seq":"4"}"#).expect_err("bad seq");
    assert_eq!(m.seq, None);
}

#[test]
fn unknown_fields_are_ignored() {
    let f = Frame::parse(r#"{"type":"ack","ack":2,"x-future":{"a":1}}"#).expect("ok");
    assert_eq!(f.ack, Some(2));
}

/// A small deterministic PRNG (xorshift64*), so the property test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    let keys = [
        "type",
        "session",
        "seq",
        "ack",
        "correlation",
        "package",
        "action",
        "code",
        "reason",
        "payload",
        "x",
    ];
    let strings = [
        "request", "response", "message", "ack", "error", "", "billing", "CONNECT", "a b", "é",
    ];
    match rng.below(if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => json!(rng.below(12)),
        3 => match rng.below(5) {
            0 => json!(-(rng.below(1000) as i64)),
            1 => json!(rng.next()),
            2 => json!(rng.below(1000) as f64 / 7.0),
            3 => json!(MAX_SEQ + rng.below(3)),
            _ => json!(u64::MAX),
        },
        4 | 5 => Value::String(strings[rng.below(strings.len() as u64) as usize].to_owned()),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(9) {
                let k = keys[rng.below(keys.len() as u64) as usize];
                m.insert(k.to_owned(), random_value(rng, depth - 1));
            }
            Value::Object(m)
        }
    }
}

#[test]
fn fuzz_frame_parsing_never_panics_and_accepted_frames_round_trip() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for i in 0..20_000 {
        // Mostly objects shaped like frames, some arbitrary values, some broken text.
        let text = match i % 10 {
            0 => {
                let len = rng.below(40) as usize;
                let alphabet = b"{}[]\":,0123456789.-eE tnulfrs\\";
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize] as char)
                    .collect()
            }
            1 => random_value(&mut rng, 3).to_string(),
            _ => {
                let mut m = serde_json::Map::new();
                let kinds = ["request", "response", "message", "ack", "error"];
                m.insert("type".into(), json!(kinds[rng.below(5) as usize]));
                for _ in 0..rng.below(7) {
                    let v = random_value(&mut rng, 2);
                    let k = [
                        "seq",
                        "ack",
                        "correlation",
                        "package",
                        "action",
                        "code",
                        "session",
                        "payload",
                    ][rng.below(8) as usize];
                    m.insert(k.into(), v);
                }
                Value::Object(m).to_string()
            }
        };
        if let Ok(frame) = Frame::parse(&text) {
            accepted += 1;
            let again = Frame::parse(&frame.encode());
            assert_eq!(again.as_ref(), Ok(&frame), "{text}");
        }
    }
    assert!(
        accepted > 100,
        "the generator should produce some valid frames ({accepted})"
    );
}

#[test]
fn session_ids() {
    let a = SessionId::random().expect("randomness");
    let b = SessionId::random().expect("randomness");
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), 32);
    assert!(SessionId::parse(a.as_str()).is_ok());
    assert!(SessionId::parse("").is_err());
    assert!(SessionId::parse(&"a".repeat(65)).is_err());
    assert!(SessionId::parse("a/b").is_err());
}

// ---------------------------------------------------------------------------------------------
// Handshake

#[test]
fn connect_request_round_trips() {
    let fresh = ConnectRequest {
        resume: None,
        role: Some("billing".into()),
        subscribe: vec!["call".into()],
    };
    let f = Frame::parse(&fresh.to_frame().encode()).expect("frame");
    assert_eq!(f.seq, None);
    assert_eq!(ConnectRequest::from_frame(&f), Ok(fresh));
    let resume = ConnectRequest {
        resume: Some(ResumeRequest {
            session: sid("s1"),
            received: 41,
            window: WindowBounds {
                first: 17,
                next: 23,
            },
        }),
        role: None,
        subscribe: vec![],
    };
    let f = Frame::parse(&resume.to_frame().encode()).expect("frame");
    assert_eq!(f.ack, Some(41));
    assert_eq!(ConnectRequest::from_frame(&f), Ok(resume));
}

#[test]
fn connect_request_errors_are_precise() {
    let f = Frame::parse(
        r#"{"type":"request","package":"session","action":"CONNECT","session":"s1","ack":3}"#,
    )
    .expect("frame");
    assert!(matches!(
        ConnectRequest::from_frame(&f),
        Err(FrameError::Missing {
            field: "payload.window",
            ..
        })
    ));
    let f = Frame::parse(
        r#"{"type":"request","package":"session","action":"CONNECT","session":"s1","payload":{"window":{"first":"1","next":2}}}"#,
    )
    .expect("frame");
    assert_eq!(
        ConnectRequest::from_frame(&f).map_err(|e| e.to_string()),
        Err(
            "field `payload.window.first`: expected an integer from 1 to 2^53-1, got a string"
                .into()
        )
    );
    let f = Frame::parse(
        r#"{"type":"request","package":"session","action":"CONNECT","payload":{"subscribe":"call"}}"#,
    )
    .expect("frame");
    assert!(matches!(
        ConnectRequest::from_frame(&f),
        Err(FrameError::WrongType {
            field: "payload.subscribe",
            ..
        })
    ));
}

#[test]
fn connect_response_round_trips() {
    let r = ConnectResponse {
        session: sid("new1"),
        resumed: false,
        previous: Some(sid("old1")),
        received: 0,
        code: Some(404),
        reason: Some("unknown".into()),
        window: 1024,
        keepalive_ms: 15_000,
        expiry_ms: 120_000,
    };
    let f = Frame::parse(&r.to_frame().encode()).expect("frame");
    assert_eq!(ConnectResponse::from_frame(&f), Ok(r));
}

// ---------------------------------------------------------------------------------------------
// Session

fn cfg(window: usize) -> SessionConfig {
    SessionConfig {
        window,
        ack_delay: Duration::from_millis(20),
        ack_every: 1000,
        expiry: Duration::from_secs(60),
    }
}

fn msg(n: u64) -> Frame {
    Frame::with_body(
        FrameType::Message,
        Body::new("call", "NOTIFY", json!({ "n": n })),
    )
}

/// Everything `from` transmits at `now`, parsed.
fn drain(from: &mut Session, now: Instant) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(text) = from.poll_transmit(now) {
        out.push(Frame::parse(&text).expect("own frames parse"));
    }
    out
}

/// Feeds frames to `to`; returns the payload numbers delivered.
fn feed(to: &mut Session, now: Instant, frames: Vec<Frame>) -> Vec<u64> {
    let mut got = Vec::new();
    for f in frames {
        if let Inbound::Deliver(f) = to.handle(now, f) {
            got.push(f.payload["n"].as_u64().unwrap_or(0));
        }
    }
    got
}

#[test]
fn sequencing_starts_at_one_and_stamps_session() {
    let t0 = Instant::now();
    let mut a = Session::new(sid("s"), cfg(16));
    for n in 1..=3 {
        assert_eq!(a.send(msg(n)), Ok(n));
    }
    let frames = drain(&mut a, t0);
    let seqs: Vec<_> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, [Some(1), Some(2), Some(3)]);
    assert!(frames.iter().all(|f| f.session == Some(sid("s"))));
    assert_eq!(a.unacked(), 3);
    assert_eq!(a.stats().sent, 3);
    assert_eq!(
        a.send(Frame::new(FrameType::Ack)),
        Err(SendError::NotSequenced(FrameType::Ack))
    );
}

#[test]
fn cumulative_ack_after_delay_releases_the_window() {
    let t0 = Instant::now();
    let mut a = Session::new(sid("s"), cfg(16));
    let mut b = Session::new(sid("s"), cfg(16));
    for n in 1..=3 {
        a.send(msg(n)).expect("room");
    }
    let got = feed(&mut b, t0, drain(&mut a, t0));
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(b.received(), 3);
    // Not yet: the ack waits for something to ride on.
    assert_eq!(b.poll_transmit(t0), None);
    let due = b.poll_timeout().expect("ack timer");
    assert_eq!(due, t0 + Duration::from_millis(20));
    let acks = drain(&mut b, due);
    assert_eq!(acks.len(), 1);
    assert_eq!((acks[0].kind, acks[0].ack), (FrameType::Ack, Some(3)));
    assert_eq!(a.handle(due, acks[0].clone()), Inbound::Ack);
    assert_eq!(a.unacked(), 0);
    assert_eq!(a.window_bounds(), WindowBounds { first: 4, next: 4 });
    // Nothing more to say.
    assert_eq!(b.poll_transmit(due + Duration::from_secs(1)), None);
}

#[test]
fn acks_ride_on_outgoing_frames_and_ack_every_forces_one() {
    let t0 = Instant::now();
    let mut a = Session::new(sid("s"), cfg(16));
    let mut b = Session::new(
        sid("s"),
        SessionConfig {
            ack_every: 2,
            ..cfg(16)
        },
    );
    a.send(msg(1)).expect("room");
    feed(&mut b, t0, drain(&mut a, t0));
    b.send(msg(100)).expect("room");
    let out = drain(&mut b, t0);
    assert_eq!(out.len(), 1, "no separate ack: it rides on the message");
    assert_eq!(out[0].ack, Some(1));
    a.handle(t0, out[0].clone());
    assert_eq!(a.unacked(), 0);
    // Two more frames: ack_every = 2 makes the ack due at once.
    a.send(msg(2)).expect("room");
    a.send(msg(3)).expect("room");
    feed(&mut b, t0, drain(&mut a, t0));
    let out = drain(&mut b, t0);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].kind, out[0].ack), (FrameType::Ack, Some(3)));
}

#[test]
fn duplicates_are_acked_again_and_not_delivered() {
    let t0 = Instant::now();
    let mut a = Session::new(sid("s"), cfg(16));
    let mut b = Session::new(sid("s"), cfg(16));
    a.send(msg(1)).expect("room");
    let frames = drain(&mut a, t0);
    assert_eq!(feed(&mut b, t0, frames.clone()), [1]);
    // The ack goes out (delayed), then the same frame arrives again.
    drain(&mut b, t0 + Duration::from_secs(1));
    assert_eq!(
        b.handle(t0, frames[0].clone()),
        Inbound::Duplicate { seq: 1 }
    );
    let out = drain(&mut b, t0);
    assert_eq!(out.len(), 1, "a duplicate is acknowledged at once");
    assert_eq!(out[0].ack, Some(1));
    assert_eq!(b.stats().delivered, 1);
    assert_eq!(b.stats().duplicates, 1);
}

#[test]
fn gaps_are_dropped_and_filled_in_order_later() {
    let t0 = Instant::now();
    let mut a = Session::new(sid("s"), cfg(16));
    let mut b = Session::new(sid("s"), cfg(16));
    for n in 1..=3 {
        a.send(msg(n)).expect("room");
    }
    let frames = drain(&mut a, t0);
    assert_eq!(feed(&mut b, t0, vec![frames[0].clone()]), [1]);
    assert_eq!(
        b.handle(t0, frames[2].clone()),
        Inbound::Gap {
            expected: 2,
            got: 3
        }
    );
    assert_eq!(b.received(), 1);
    assert_eq!(
        feed(&mut b, t0, vec![frames[1].clone(), frames[2].clone()]),
        [2, 3]
    );
}

#[test]
fn window_full_refuses_sends_until_acked() {
    let t0 = Instant::now();
    let mut a = Session::new(sid("s"), cfg(4));
    for n in 1..=4 {
        a.send(msg(n)).expect("room");
    }
    assert_eq!(a.send(msg(5)), Err(SendError::WindowFull { capacity: 4 }));
    assert_eq!(a.stats().window_full, 1);
    assert_eq!(a.window_free(), 0);
    drain(&mut a, t0);
    let mut ack = Frame::new(FrameType::Ack);
    ack.ack = Some(2);
    a.handle(t0, ack);
    assert_eq!(a.window_free(), 2);
    assert_eq!(a.send(msg(5)), Ok(5));
    assert_eq!(a.send(msg(6)), Ok(6));
    assert!(a.send(msg(7)).is_err());
    // A protocol error with a full window goes out unsequenced, at once.
    let text = a.send_error(400, "bad", None).expect("unsequenced");
    let f = Frame::parse(&text).expect("frame");
    assert_eq!((f.kind, f.seq, f.code), (FrameType::Error, None, Some(400)));
}

#[test]
fn protocol_violations_are_rejected_and_consume_the_next_seq() {
    let t0 = Instant::now();
    let mut b = Session::new(sid("s"), cfg(16));
    let m = Frame::parse(r#"{"type":"bogus","seq":1}"#).expect_err("malformed");
    assert!(matches!(
        b.handle_malformed(t0, m.clone()),
        Inbound::Rejected {
            consumed: Some(1),
            ..
        }
    ));
    assert_eq!(b.received(), 1);
    // Retransmitted: a duplicate, not a second error.
    assert_eq!(b.handle_malformed(t0, m), Inbound::Duplicate { seq: 1 });
    let mut next = msg(2);
    next.seq = Some(2);
    assert!(matches!(b.handle(t0, next), Inbound::Deliver(_)));
    // No seq on a message.
    assert_eq!(
        b.handle(t0, msg(3)),
        Inbound::Rejected {
            error: ProtocolError::MissingSeq(FrameType::Message),
            consumed: None
        }
    );
    // Ack of frames never sent.
    let mut ack = Frame::new(FrameType::Ack);
    ack.ack = Some(5);
    assert!(matches!(
        b.handle(t0, ack),
        Inbound::Rejected {
            error: ProtocolError::AckBeyondSent {
                ack: 5,
                last_sent: 0
            },
            ..
        }
    ));
    // Another session's frame.
    let mut other = msg(3);
    other.seq = Some(3);
    other.session = Some(sid("other"));
    assert!(matches!(
        b.handle(t0, other),
        Inbound::Rejected {
            error: ProtocolError::WrongSession { .. },
            consumed: Some(3)
        }
    ));
}

/// Server `s` and client `c` exchange frames, the link loses some in both directions, the
/// client reconnects and resumes; everything arrives exactly once, in order.
#[test]
fn resume_after_loss_in_both_directions() {
    let t0 = Instant::now();
    let mut s = Session::new(sid("s"), cfg(64));
    let mut c = Session::new(sid("s"), cfg(64));
    let mut at_client = Vec::new();
    let mut at_server = Vec::new();
    for n in 1..=10 {
        s.send(msg(n)).expect("room");
    }
    for n in 101..=108 {
        c.send(msg(n)).expect("room");
    }
    // Server → client: only the first 5 arrive. Client → server: only 3.
    let from_s = drain(&mut s, t0);
    let from_c = drain(&mut c, t0);
    at_client.extend(feed(&mut c, t0, from_s[..5].to_vec()));
    at_server.extend(feed(&mut s, t0, from_c[..3].to_vec()));
    // Some acks got through before the cut: the client's ack of 1..=2 (riding on nothing).
    let mut ack = Frame::new(FrameType::Ack);
    ack.ack = Some(2);
    s.handle(t0, ack);
    assert_eq!(s.window_bounds(), WindowBounds { first: 3, next: 11 });
    // The connection dies; both sides detach; the app keeps sending meanwhile.
    let t1 = t0 + Duration::from_secs(1);
    s.detach(t1);
    c.detach(t1);
    s.send(msg(11)).expect("room");
    c.send(msg(109)).expect("room");
    assert_eq!(s.poll_transmit(t1), None, "nothing goes out while detached");
    // Reconnect: the client says what it has and what it holds.
    let t2 = t1 + Duration::from_secs(1);
    let resumed = s
        .resume(t2, c.received(), c.window_bounds())
        .expect("resumable");
    assert_eq!(resumed.retransmit, 6, "server frames 6..=11");
    assert_eq!(resumed.released, 3, "server frames 3..=5 were received");
    let resumed = c.resumed(s.received()).expect("consistent");
    assert_eq!(resumed.retransmit, 6, "client frames 104..=109");
    // Pump until quiet.
    for _ in 0..4 {
        let from_s = drain(&mut s, t2);
        let from_c = drain(&mut c, t2);
        at_client.extend(feed(&mut c, t2, from_s));
        at_server.extend(feed(&mut s, t2, from_c));
    }
    assert_eq!(at_client, (1..=11).collect::<Vec<_>>());
    assert_eq!(at_server, (101..=109).collect::<Vec<_>>());
    assert!(s.stats().retransmitted >= 5);
    assert!(c.stats().retransmitted >= 5);
    // Acks flow: eventually both windows are empty.
    let later = t2 + Duration::from_secs(1);
    for _ in 0..3 {
        let from_s = drain(&mut s, later);
        let from_c = drain(&mut c, later);
        feed(&mut c, later, from_s);
        feed(&mut s, later, from_c);
    }
    assert_eq!((s.unacked(), c.unacked()), (0, 0));
}

#[test]
fn resume_refused_when_states_disagree() {
    let t0 = Instant::now();
    let mut s = Session::new(sid("s"), cfg(16));
    for n in 1..=3 {
        s.send(msg(n)).expect("room");
    }
    drain(&mut s, t0);
    let mut ack = Frame::new(FrameType::Ack);
    ack.ack = Some(3);
    s.handle(t0, ack);
    let mut f = msg(100);
    f.seq = Some(1);
    s.handle(t0, f);
    s.detach(t0);
    let ok_window = WindowBounds { first: 2, next: 2 };
    // The peer says it received only 1: frames 2..=3 are gone from the window.
    let e = s.resume(t0, 1, ok_window).expect_err("gone");
    assert_eq!(
        e,
        ResumeRefused::FramesGone {
            from: 2,
            to: 3,
            first_held: 4
        }
    );
    assert_eq!(e.code(), 412);
    // The peer claims more than was sent.
    assert!(matches!(
        s.resume(t0, 9, ok_window),
        Err(ResumeRefused::PeerAhead {
            claimed: 9,
            last_sent: 3
        })
    ));
    // The peer dropped its frame 2..=4 we never got.
    assert!(matches!(
        s.resume(t0, 3, WindowBounds { first: 5, next: 6 }),
        Err(ResumeRefused::PeerFramesGone { from: 2, to: 4, .. })
    ));
    // We received seq 1, but the peer says its next is 1.
    assert!(matches!(
        s.resume(t0, 3, WindowBounds { first: 1, next: 1 }),
        Err(ResumeRefused::PeerBehind {
            received: 1,
            peer_next: 1
        })
    ));
    assert!(matches!(
        s.resume(t0, 3, WindowBounds { first: 0, next: 0 }),
        Err(ResumeRefused::BadWindow { .. })
    ));
    // And the right answer works.
    assert!(s.resume(t0, 3, ok_window).is_ok());
    assert!(s.is_attached());
}

#[test]
fn detached_sessions_expire() {
    let t0 = Instant::now();
    let expiry = Duration::from_secs(60);
    let mut s = Session::new(sid("s"), cfg(16));
    assert!(
        !s.is_expired(t0 + expiry * 2),
        "attached sessions never expire"
    );
    s.detach(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + expiry));
    assert!(!s.is_expired(t0 + expiry - Duration::from_millis(1)));
    assert!(s.is_expired(t0 + expiry));
    let e = s
        .resume(t0 + expiry, 0, WindowBounds { first: 1, next: 1 })
        .expect_err("expired");
    assert!(matches!(e, ResumeRefused::Expired { .. }));
    assert_eq!(e.code(), 404);
    // Just before expiry it resumes.
    let mut s = Session::new(sid("s"), cfg(16));
    s.detach(t0);
    assert!(
        s.resume(t0 + expiry / 2, 0, WindowBounds { first: 1, next: 1 })
            .is_ok()
    );
}

#[test]
fn into_unacked_returns_what_the_peer_never_confirmed() {
    let t0 = Instant::now();
    let mut c = Session::new(sid("s"), cfg(16));
    for n in 1..=4 {
        c.send(msg(n)).expect("room");
    }
    drain(&mut c, t0);
    let mut ack = Frame::new(FrameType::Ack);
    ack.ack = Some(2);
    c.handle(t0, ack);
    let lost: Vec<_> = c.into_unacked().iter().map(|f| f.seq).collect();
    assert_eq!(lost, [Some(3), Some(4)]);
}
