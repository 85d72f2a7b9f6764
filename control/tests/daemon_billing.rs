//! Prepaid credit through the daemon with real UDP media on loopback: an account with credit
//! for 3 seconds; media flows, then stops when the credit is exhausted — verified at the
//! receiver with kernel receive timestamps (SO_TIMESTAMPNS), so the test's own scheduling
//! cannot blur the bound — and the CDR says `credit-exhausted` with the right charge. A top-up
//! before exhaustion lets a call continue. Accounts and tariffs are set through the HTTP API.

use std::{
    net::UdpSocket,
    os::fd::AsRawFd,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

#[path = "support/http.rs"]
mod http_client;
use http_client::http;
#[path = "support/daemon.rs"]
mod daemon;
use daemon::{Daemon, media_port, rtp_silence};

fn start(ng_port: u16, ports: &str) -> Daemon {
    Daemon::builder("billing", ng_port, ports)
        .args(["--delete-delay", "1"])
        .start()
}

fn rtp(seq: u16) -> Vec<u8> {
    rtp_silence(0x3333, seq)
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Receives until `quiet` passes with nothing; returns the kernel receive time of each packet.
fn kernel_arrivals(sock: &UdpSocket, quiet: Duration) -> Vec<Duration> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt/recvmsg with valid buffers on our own socket.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &one as *const _ as *const libc::c_void,
            4,
        );
    }
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    loop {
        let mut buf = [0u8; 2048];
        let mut cmsg = [0u8; 128];
        // SAFETY: as above.
        let ts = unsafe {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = cmsg.len();
            if libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) < 0 {
                return out;
            }
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            let mut ts = None;
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let t = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    ts = Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            ts
        };
        out.push(ts.expect("kernel timestamp"));
    }
}

/// Offers and answers a call billed to `acme`; returns (caller, callee, port to send to the
/// callee through rtpedge, wall time just after the answer was acknowledged).
fn answered_call(d: &Daemon, call_id: &str) -> (UdpSocket, UdpSocket, u16, Duration) {
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (_, answer) = d.billed_call(
        call_id,
        caller.local_addr().unwrap().port(),
        callee.local_addr().unwrap().port(),
    );
    let answered = unix_now();
    let to_caller_leg = media_port(answer.get_bytes("sdp").unwrap());
    (caller, callee, to_caller_leg, answered)
}

/// Streams RTP from `caller` to the edge every 2 ms for `for_`.
fn stream(caller: &UdpSocket, port: u16, for_: Duration) {
    let start = Instant::now();
    let mut seq = 0u16;
    while start.elapsed() < for_ {
        let _ = caller.send_to(&rtp(seq), ("127.0.0.1", port));
        seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn media_stops_when_prepaid_credit_runs_out() {
    let d = start(22270, "48000-48999");
    d.prepaid_acme("per-second", 3); // 3 seconds at 1 unit per second
    let (caller, callee, port, answered) = answered_call(&d, "prepaid-1");
    let receiver = std::thread::spawn(move || kernel_arrivals(&callee, Duration::from_millis(800)));
    stream(&caller, port, Duration::from_secs(4));
    let arrivals = receiver.join().unwrap();
    let last = *arrivals.last().expect("media flowed");
    let bound = answered + Duration::from_secs(3) + Duration::from_millis(10);
    let late = last.saturating_sub(answered + Duration::from_secs(3));
    eprintln!(
        "last packet {:.1} ms after credit ran out (answer acknowledged + 3 s); {} packets delivered",
        late.as_secs_f64() * 1000.0,
        arrivals.len()
    );
    assert!(
        last <= bound,
        "a packet arrived {late:?} after the credit ran out"
    );
    assert!(
        last >= answered + Duration::from_millis(2800),
        "media flowed until (nearly) the end of the credit, not stopped early"
    );
    let c = d.cdr("prepaid-1");
    assert_eq!(c["end_reason"], "credit-exhausted", "{c}");
    assert_eq!(c["charge"], 3, "{c}");
    assert_eq!(c["account"], "acme", "{c}");
    let (_, acct) = http(d.http, "GET", "/v1/accounts/acme", "");
    let acct: serde_json::Value = serde_json::from_str(&acct).unwrap();
    assert_eq!(
        (acct["balance"].as_i64(), acct["reserved"].as_i64()),
        (Some(0), Some(0)),
        "{acct}"
    );
}

#[test]
fn a_top_up_before_exhaustion_lets_the_call_continue() {
    let d = start(22271, "49000-49999");
    d.prepaid_acme("per-second", 3);
    let (caller, callee, port, answered) = answered_call(&d, "prepaid-2");
    // Media from the answer on (a late first packet would miss the NAT learning window).
    let receiver = std::thread::spawn(move || kernel_arrivals(&callee, Duration::from_millis(800)));
    let sender = std::thread::spawn(move || stream(&caller, port, Duration::from_millis(4500)));
    std::thread::sleep(Duration::from_millis(1500));
    let (s, b) = http(
        d.http,
        "POST",
        "/v1/accounts/acme/topup",
        r#"{"amount": 100}"#,
    );
    assert_eq!(s, 200, "{b}");
    std::thread::sleep(Duration::from_millis(2000));
    let (s, calls) = http(d.http, "GET", "/v1/calls", "");
    assert_eq!(s, 200);
    let calls: serde_json::Value = serde_json::from_str(&calls).unwrap();
    assert_eq!(calls[0]["account"], "acme");
    assert!(
        calls[0]["reserved"].as_i64().unwrap_or(0) > 0,
        "credit is reserved: {calls}"
    );
    sender.join().unwrap();
    let arrivals = receiver.join().unwrap();
    let beyond = arrivals
        .iter()
        .filter(|t| **t > answered + Duration::from_millis(3500))
        .count();
    assert!(
        beyond > 100,
        "media kept flowing past the original 3 s of credit: {beyond} packets"
    );
    d.delete_billed_call("prepaid-2");
    let c = d.cdr("prepaid-2");
    assert_eq!(c["end_reason"], "delete", "{c}");
    let charge = c["charge"].as_i64().unwrap();
    assert!((4..=6).contains(&charge), "about 5 s of talk charged: {c}");
    // Bad requests get JSON errors.
    let (s, b) = http(d.http, "GET", "/v1/accounts/nobody", "");
    assert_eq!(s, 404, "{b}");
    let (s, b) = http(d.http, "PUT", "/v1/accounts/x", "{not json");
    assert_eq!(s, 400, "{b}");
    assert!(b.contains("\"error\""), "{b}");
}
