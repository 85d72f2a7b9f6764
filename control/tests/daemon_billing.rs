//! Prepaid credit through the daemon with real UDP media on loopback: an account with credit
//! for 3 seconds; media flows, then stops when the credit is exhausted — verified at the
//! receiver with kernel receive timestamps (SO_TIMESTAMPNS), so the test's own scheduling
//! cannot blur the bound — and the CDR says `credit-exhausted` with the right charge. A top-up
//! before exhaustion lets a call continue. Accounts and tariffs are set through the HTTP API.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rtpedge::ng::{NgClient, Value};

struct Daemon {
    child: Child,
    ng: SocketAddr,
    http: SocketAddr,
    dir: std::path::PathBuf,
}

impl Daemon {
    fn start(ng_port: u16, ports: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("rtpedge-billing-{}-{ng_port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ng: SocketAddr = format!("127.0.0.1:{ng_port}").parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", ng_port + 10000).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rtpedge"))
            .args([
                "--ng",
                &ng.to_string(),
                "--http",
                &http.to_string(),
                "--ports",
                ports,
            ])
            .args(["--no-xdp", "--workers", "1", "--delete-delay", "1"])
            .args(["--ws", &format!("127.0.0.1:{}", ng_port + 20000)])
            .arg("--cdr-db")
            .arg(dir.join("cdr.sqlite"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rtpedge");
        let d = Daemon {
            child,
            ng,
            http,
            dir,
        };
        let c = NgClient::new(ng)
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.ping().is_err() {
            assert!(Instant::now() < deadline, "daemon did not answer ping");
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.1 request: status and body.
#[path = "support/http.rs"]
mod http_client;
use http_client::http;

fn sdp(port: u16) -> Vec<u8> {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
    )
    .into_bytes()
}

fn media_port(sdp: &[u8]) -> u16 {
    String::from_utf8_lossy(sdp)
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("m= port")
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(0x3333u32.to_be_bytes());
    p.extend([0xd5; 160]);
    p
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

fn setup_account(d: &Daemon, balance: i64) {
    let (s, b) = http(
        d.http,
        "PUT",
        "/v1/tariffs/per-second",
        r#"{"per_minute": 60, "per_kilobyte": 0, "increment_s": 1, "connection_fee": 0}"#,
    );
    assert_eq!(s, 200, "{b}");
    let (s, b) = http(
        d.http,
        "PUT",
        "/v1/accounts/acme",
        &format!(r#"{{"balance": {balance}, "tariff": "per-second", "mode": "prepaid"}}"#),
    );
    assert_eq!(s, 200, "{b}");
}

/// Offers and answers a call billed to `acme`; returns (caller, callee, port to send to the
/// callee through rtpedge, wall time just after the answer was acknowledged).
fn answered_call(d: &Daemon, call_id: &str) -> (UdpSocket, UdpSocket, u16, Duration) {
    let ng = NgClient::new(d.ng)
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    ng.offer(
        call_id,
        "a",
        &sdp(caller.local_addr().unwrap().port()),
        &[("account", Value::from("acme"))],
    )
    .unwrap();
    let answer = ng
        .answer(
            call_id,
            "a",
            "b",
            &sdp(callee.local_addr().unwrap().port()),
            &[],
        )
        .unwrap();
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

fn cdr(d: &Daemon, call_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, body) = http(d.http, "GET", &format!("/v1/cdrs?call_id={call_id}"), "");
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if !v[0]["end_reason"].is_null() || Instant::now() > deadline {
            return v[0].clone();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn media_stops_when_prepaid_credit_runs_out() {
    let d = Daemon::start(22270, "48000-48999");
    setup_account(&d, 3); // 3 seconds at 1 unit per second
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
    let c = cdr(&d, "prepaid-1");
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
    let d = Daemon::start(22271, "49000-49999");
    setup_account(&d, 3);
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
    let ng = NgClient::new(d.ng).unwrap();
    ng.delete("prepaid-2", Some("a"), None, &[]).unwrap();
    let c = cdr(&d, "prepaid-2");
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
