//! The daemon binary end to end on loopback: ng over UDP (the same client Kamailio's module
//! speaks to), real RTP through the ports the rewritten SDP advertises, statistics, delete, CDRs
//! in SQLite, malformed requests, retransmissions, and a graceful SIGTERM. Runs with --no-xdp
//! (the XDP path has its own namespace tests), so it needs no privileges.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use rtpedge::ng::Value;

#[path = "support/daemon.rs"]
mod daemon;
use daemon::{Daemon, rtp_silence};

fn start(ng_port: u16, ports: &str) -> Daemon {
    start_with(ng_port, ports, "127.0.0.1")
}

fn start_with(ng_port: u16, ports: &str, media: &str) -> Daemon {
    Daemon::builder("daemon", ng_port, ports)
        .args(["--media-address", media])
        .args(["--delete-delay", "1", "--media-timeout", "30"])
        .start()
}

fn sdp(port: u16) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=sendrecv\r\n"
    )
    .into_bytes()
}

/// The m= port and c= address of a rewritten SDP.
fn media_target(sdp: &[u8]) -> SocketAddr {
    let text = String::from_utf8_lossy(sdp);
    let addr = text
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("m= line");
    format!("{addr}:{port}").parse().unwrap()
}

fn rtp(seq: u16) -> Vec<u8> {
    rtp_silence(0x1111, seq)
}

fn recv_all(sock: &UdpSocket) -> usize {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut n = 0;
    let mut buf = [0u8; 2048];
    while sock.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

fn bytes_of(v: &Value, key: &str) -> Vec<u8> {
    v.get_bytes(key).expect(key).to_vec()
}

#[test]
fn call_through_the_daemon_with_cdr() {
    let mut d = start(22230, "41000-41999");
    let ng = d.client();
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let received_from = Value::list([Value::from("IP4"), Value::from("127.0.0.1")]);

    let offer = ng
        .offer(
            "call-1",
            "tag-a",
            &sdp(caller.local_addr().unwrap().port()),
            &[("received-from", received_from.clone())],
        )
        .unwrap();
    let to_callee = media_target(&bytes_of(&offer, "sdp"));
    assert_ne!(to_callee.port(), callee.local_addr().unwrap().port());
    assert!(
        (41000..=41999).contains(&to_callee.port()),
        "port from the range"
    );
    let answer = ng
        .answer(
            "call-1",
            "tag-a",
            "tag-b",
            &sdp(callee.local_addr().unwrap().port()),
            &[("received-from", received_from)],
        )
        .unwrap();
    let to_caller = media_target(&bytes_of(&answer, "sdp"));

    for seq in 0..20 {
        caller.send_to(&rtp(seq), to_caller).unwrap();
        callee.send_to(&rtp(seq), to_callee).unwrap();
    }
    assert_eq!(recv_all(&callee), 20, "caller → callee through rtpedge");
    assert_eq!(recv_all(&caller), 20, "callee → caller through rtpedge");

    // Media from a third address is never forwarded (trusted address: exact remote).
    let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
    for seq in 20..30 {
        intruder.send_to(&rtp(seq), to_caller).unwrap();
    }
    assert_eq!(recv_all(&callee), 0);

    let q = ng.query("call-1", None, None).unwrap();
    let totals = q
        .get("totals")
        .and_then(|t| t.get("RTP"))
        .expect("totals.RTP");
    assert_eq!(totals.get_int("packets"), Some(40));
    assert!(totals.get_int("errors").unwrap() >= 10);
    let tags = q.get("tags").expect("tags");
    let a = tags.get("tag-a").expect("tag-a");
    assert_eq!(a.get_str("in dialogue with"), Some("tag-b"));
    assert_eq!(ng.list(None).unwrap(), vec!["call-1".to_string()]);

    // The HTTP API sees the live call.
    let (status, body) = http_get(d.http, "/v1/calls");
    assert_eq!(status, 200, "{body}");
    let calls: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(calls[0]["call_id"], "call-1");
    assert_eq!(calls[0]["state"], "answered");
    assert_eq!(calls[0]["packets"], 40);
    let (status, body) = http_get(d.http, "/v1/calls/call-1");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(d.http, "/v1/calls/nope");
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "{body}");

    let del = ng.delete("call-1", Some("tag-a"), None, &[]).unwrap();
    assert!(del.get("totals").is_some(), "delete returns statistics");
    for seq in 30..40 {
        caller.send_to(&rtp(seq), to_caller).unwrap();
    }
    assert_eq!(recv_all(&callee), 0, "no media after delete");

    // The CDR through the HTTP API (written by the CDR thread: poll briefly).
    let deadline = Instant::now() + Duration::from_secs(5);
    let cdrs = loop {
        let (status, body) = http_get(d.http, "/v1/cdrs?call_id=call-1");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v[0]["end_reason"] == "delete" || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(cdrs.as_array().map(Vec::len), Some(1));
    assert_eq!(cdrs[0]["end_reason"], "delete");
    assert_eq!(cdrs[0]["packets_ab"], 20);
    let (status, body) = http_get(d.http, "/v1/cdrs");
    assert_eq!(status, 400, "call_id is required: {body}");
    let (status, body) = http_get(d.http, "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("rtpedge_calls_ended_total{reason=\"delete\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("rtpedge_ng_requests_total{command=\"offer\",result=\"ok\"} 1"),
        "{body}"
    );

    // SIGTERM: graceful, exit 0; exactly one CDR, with what flowed.
    assert!(d.terminate().success());
    let conn = rusqlite::Connection::open(d.cdr_db()).unwrap();
    let rows: Vec<(String, String, Option<String>, i64, i64, i64)> = conn
        .prepare(
            "SELECT call_id, end_reason, to_tag, packets_ab, packets_ba, dropped_xdp FROM cdrs",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (call_id, reason, to_tag, ab, ba, _) = &rows[0];
    assert_eq!(
        (call_id.as_str(), reason.as_str(), to_tag.as_deref()),
        ("call-1", "delete", Some("tag-b"))
    );
    assert_eq!((*ab, *ba), (20, 20));
}

#[test]
fn bad_requests_get_precise_errors_and_lose_nothing() {
    let mut d = start(22231, "42000-42999");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ask = |datagram: &[u8]| -> String {
        sock.send_to(datagram, d.ng).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = sock.recv_from(&mut buf).expect("a reply");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // A live call, which bad requests must not disturb.
    let ng = d.client();
    ng.offer("live", "a", &sdp(5000), &[]).unwrap();
    for (req, want) in [
        (&b"c1 d7:command4:pinge"[..], "pong"),
        (b"c2 d7:commande", "error"),
        (b"c3 i42e", "error"),
        (b"c4 d7:command5:offere", "No SDP body"),
        (b"c5 d7:command9:frobnicate", "error"),
        (b"c6 d7:command10:frobnicatee", "Unrecognized command"),
        (
            b"c7 d7:command5:offer7:call-idli1ee8:from-tag1:a3:sdp1:xe",
            "Invalid type for key \"call-id\"",
        ),
        (
            b"c8 d7:command5:offer7:call-id1:x8:from-tag1:a3:sdp3:v=0e",
            "Failed to parse SDP",
        ),
        (
            b"c9 d7:command6:answer7:call-id4:nope8:from-tag1:a6:to-tag1:b3:sdp3:v=0e",
            "error",
        ),
        (b"c10 {\"command\": \"ping\"}", "pong"),
    ] {
        let reply = ask(req);
        let cookie =
            String::from_utf8_lossy(req.split(|&b| b == b' ').next().unwrap()).into_owned();
        assert!(reply.starts_with(&format!("{cookie} ")), "{reply}");
        assert!(reply.contains(want), "{req:?} → {reply}");
    }
    // A retransmitted cookie gets the cached reply; the command does not run twice.
    let offer = Value::dict([
        ("command", Value::from("offer")),
        ("call-id", Value::from("retx1")),
        ("from-tag", Value::from("a")),
        ("sdp", Value::from(sdp(7000))),
    ]);
    let mut datagram = b"r1 ".to_vec();
    rtpedge::ng::encode(&offer, &mut datagram);
    let first = ask(&datagram);
    assert!(first.contains("ok"), "{first}");
    let again = ask(&datagram);
    assert_eq!(
        first, again,
        "same reply, same ports: the offer did not run twice"
    );
    let mut calls = ng.list(None).unwrap();
    calls.sort();
    assert_eq!(calls, vec!["live".to_string(), "retx1".to_string()]);
    assert!(d.terminate().success());
}

/// The m= port and the c= address (either family) of a rewritten SDP.
fn media_target_any(sdp: &[u8]) -> SocketAddr {
    let text = String::from_utf8_lossy(sdp);
    let addr = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("c=IN IP4 ")
                .or_else(|| l.strip_prefix("c=IN IP6 "))
        })
        .expect("c= line")
        .trim()
        .to_string();
    let port: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m= line");
    SocketAddr::new(addr.parse().unwrap(), port)
}

#[test]
fn dual_stack_call_from_ipv4_to_ipv6() {
    let mut d = start_with(22232, "43000-43999", "127.0.0.1,::1");
    let ng = d.client();
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("[::1]:0").unwrap();
    let offer = ng
        .offer(
            "v4v6",
            "a",
            &sdp(caller.local_addr().unwrap().port()),
            &[("address family", Value::from("IP6"))],
        )
        .unwrap();
    let to_callee = media_target_any(&bytes_of(&offer, "sdp"));
    assert!(
        to_callee.is_ipv6(),
        "the IPv6 callee is offered the edge's IPv6 leg: {to_callee}"
    );
    let answer_sdp = format!(
        "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        callee.local_addr().unwrap().port()
    );
    let answer = ng
        .answer("v4v6", "a", "b", answer_sdp.as_bytes(), &[])
        .unwrap();
    let to_caller = media_target_any(&bytes_of(&answer, "sdp"));
    assert!(to_caller.is_ipv4());
    for seq in 0..10 {
        caller.send_to(&rtp(seq), to_caller).unwrap();
        callee.send_to(&rtp(seq), to_callee).unwrap();
    }
    assert_eq!(recv_all(&callee), 10, "IPv4 caller → IPv6 callee");
    assert_eq!(recv_all(&caller), 10, "IPv6 callee → IPv4 caller");
    assert!(d.terminate().success());
}

/// A minimal HTTP/1.1 GET: status code and body.
#[path = "support/http.rs"]
mod http_client;
use http_client::http_get;
