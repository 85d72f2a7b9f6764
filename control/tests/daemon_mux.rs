//! The daemon end to end on loopback with real UDP sockets, for the ng options that change
//! which ports media uses: `rtcp-mux-demux` (a muxed caller and a callee with an RTP/RTCP pair
//! exchange RTP and RTCP through the relay) and `asymmetric` (a caller that sends from another
//! port than its SDP port). Runs with --no-xdp: the bridge's latching is the enforcement here;
//! the XDP pinholes get the same policies (engine tests).

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use rtpedge::ng::Value;

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/http.rs"]
mod http_client;
use daemon::{Daemon, rtp_silence};

fn start(ng_port: u16, ports: &str) -> Daemon {
    Daemon::builder("mux", ng_port, ports)
        .args(["--media-address", "127.0.0.1"])
        .args(["--delete-delay", "1", "--media-timeout", "30"])
        .start()
}

fn sdp_text(v: &Value) -> String {
    String::from_utf8_lossy(v.get_bytes("sdp").expect("sdp")).into_owned()
}

/// Where the SDP says RTP goes (`c=` address, `m=` port).
fn rtp_target(sdp: &str) -> SocketAddr {
    let addr = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .expect("c= line")
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .expect("m= line");
    format!("{addr}:{port}").parse().unwrap()
}

/// The port of `a=rtcp:PORT`, if present.
fn rtcp_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=rtcp:"))
        .and_then(|v| v.split(' ').next())
        .and_then(|p| p.trim().parse().ok())
}

fn has_mux(sdp: &str) -> bool {
    sdp.lines().any(|l| l.trim_end() == "a=rtcp-mux")
}

/// An RTCP receiver report (no report blocks) from `ssrc`.
fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 201, 0, 1];
    p.extend(ssrc.to_be_bytes());
    p
}

/// Every datagram that arrives within 200 ms of silence: (payload type byte, source).
fn recv_all(sock: &UdpSocket) -> Vec<(u8, SocketAddr)> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        assert!(n >= 2);
        got.push((buf[1], from));
    }
    got
}

fn count(got: &[(u8, SocketAddr)], rtcp: bool, from: SocketAddr) -> usize {
    got.iter()
        .filter(|(pt, src)| (*pt == 201) == rtcp && *src == from)
        .count()
}

fn received_from() -> Value {
    Value::list([Value::from("IP4"), Value::from("127.0.0.1")])
}

#[test]
fn rtcp_mux_demux_relays_rtp_and_rtcp_between_a_muxed_caller_and_a_port_pair_callee() {
    let d = start(22296, "51000-51199");
    let ng = d.client();
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee_rtcp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let caller_port = caller.local_addr().unwrap().port();

    let offer_sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {caller_port} RTP/AVP 0\r\na=rtcp:{caller_port}\r\na=rtcp-mux\r\n"
    );
    let offer = ng
        .offer(
            "mux-1",
            "tag-a",
            offer_sdp.as_bytes(),
            &[
                ("received-from", received_from()),
                ("flags", Value::list([Value::from("rtcp-mux-demux")])),
            ],
        )
        .unwrap();
    let to_callee_sdp = sdp_text(&offer);
    assert!(
        !has_mux(&to_callee_sdp),
        "demux: not offered on\n{to_callee_sdp}"
    );
    let to_callee = rtp_target(&to_callee_sdp);
    let to_callee_rtcp = SocketAddr::new(
        to_callee.ip(),
        rtcp_port(&to_callee_sdp).expect("an RTCP port for the callee"),
    );
    assert_ne!(to_callee_rtcp, to_callee);

    let answer_sdp = format!(
        "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtcp:{}\r\n",
        callee_rtp.local_addr().unwrap().port(),
        callee_rtcp.local_addr().unwrap().port()
    );
    let answer = ng
        .answer(
            "mux-1",
            "tag-a",
            "tag-b",
            answer_sdp.as_bytes(),
            &[("received-from", received_from())],
        )
        .unwrap();
    let to_caller_sdp = sdp_text(&answer);
    assert!(
        has_mux(&to_caller_sdp),
        "the caller's mux accepted\n{to_caller_sdp}"
    );
    assert_eq!(
        rtcp_port(&to_caller_sdp),
        None,
        "no RTCP port for the caller"
    );
    let to_caller = rtp_target(&to_caller_sdp);

    // RTP both ways.
    for seq in 0..10 {
        caller.send_to(&rtp_silence(0xa, seq), to_caller).unwrap();
        callee_rtp
            .send_to(&rtp_silence(0xb, seq), to_callee)
            .unwrap();
    }
    let at_callee = recv_all(&callee_rtp);
    assert_eq!(count(&at_callee, false, to_callee), 10, "{at_callee:?}");
    let at_caller = recv_all(&caller);
    assert_eq!(count(&at_caller, false, to_caller), 10, "{at_caller:?}");

    // The callee's RTCP, from its RTCP port to the relay's, reaches the caller's RTP port
    // from the relay's RTP port (muxed).
    for _ in 0..3 {
        callee_rtcp.send_to(&rtcp_rr(0xb), to_callee_rtcp).unwrap();
    }
    let at_caller = recv_all(&caller);
    assert_eq!(count(&at_caller, true, to_caller), 3, "{at_caller:?}");
    // The caller's muxed RTCP, to the relay's RTP port, reaches the callee's RTCP port from
    // the relay's RTCP port; nothing of it lands on the callee's RTP port.
    for _ in 0..3 {
        caller.send_to(&rtcp_rr(0xa), to_caller).unwrap();
    }
    let at_callee_rtcp = recv_all(&callee_rtcp);
    assert_eq!(
        count(&at_callee_rtcp, true, to_callee_rtcp),
        3,
        "{at_callee_rtcp:?}"
    );
    assert!(recv_all(&callee_rtp).is_empty());

    // The caller's leg takes nothing on its unused RTCP port (RTP port + 1).
    let caller_spare = SocketAddr::new(to_caller.ip(), to_caller.port() + 1);
    caller.send_to(&rtcp_rr(0xa), caller_spare).unwrap();
    assert!(recv_all(&callee_rtcp).is_empty());
    assert!(recv_all(&callee_rtp).is_empty());

    let q = ng.query("mux-1", None, None).unwrap();
    let rtcp = q.get("totals").and_then(|t| t.get("RTCP")).expect("RTCP");
    assert_eq!(rtcp.get_int("packets"), Some(6));
}

#[test]
fn asymmetric_caller_sends_from_another_port_and_is_sent_to_its_sdp_port() {
    let d = start(22297, "51200-51399");
    let ng = d.client();
    let caller_sdp_port = UdpSocket::bind("127.0.0.1:0").unwrap();
    let caller_sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Another host on loopback.
    let intruder = UdpSocket::bind("127.0.0.2:0").unwrap();

    let offer = ng
        .offer(
            "asym-1",
            "tag-a",
            &daemon::sdp(caller_sdp_port.local_addr().unwrap().port()),
            &[
                ("received-from", received_from()),
                ("flags", Value::list([Value::from("asymmetric")])),
            ],
        )
        .unwrap();
    let to_callee = rtp_target(&sdp_text(&offer));
    let answer = ng
        .answer(
            "asym-1",
            "tag-a",
            "tag-b",
            &daemon::sdp(callee.local_addr().unwrap().port()),
            &[("received-from", received_from())],
        )
        .unwrap();
    let to_caller = rtp_target(&sdp_text(&answer));

    // The caller sends from a port its SDP never named; the callee gets it all.
    for seq in 0..10 {
        caller_sender
            .send_to(&rtp_silence(0xa, seq), to_caller)
            .unwrap();
    }
    assert_eq!(recv_all(&callee).len(), 10);
    // The callee's media goes to the caller's SDP port, not to where it sent from.
    for seq in 0..10 {
        callee.send_to(&rtp_silence(0xb, seq), to_callee).unwrap();
    }
    assert_eq!(count(&recv_all(&caller_sdp_port), false, to_caller), 10);
    assert!(recv_all(&caller_sender).is_empty());

    // A third address is not forwarded, in either direction, and redirects nothing.
    for seq in 10..20 {
        intruder.send_to(&rtp_silence(0xa, seq), to_caller).unwrap();
        intruder.send_to(&rtp_silence(0xb, seq), to_callee).unwrap();
    }
    assert!(recv_all(&callee).is_empty());
    assert!(recv_all(&caller_sdp_port).is_empty());
    assert!(recv_all(&intruder).is_empty());
    for seq in 20..25 {
        callee.send_to(&rtp_silence(0xb, seq), to_callee).unwrap();
        caller_sender
            .send_to(&rtp_silence(0xa, seq), to_caller)
            .unwrap();
    }
    assert_eq!(count(&recv_all(&caller_sdp_port), false, to_caller), 5);
    assert_eq!(recv_all(&callee).len(), 5);
    assert!(recv_all(&intruder).is_empty());
}
