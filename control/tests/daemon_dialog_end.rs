//! Credit exhaustion ends the SIP dialog too: with `[billing] end_dialog_url`, the daemon asks a
//! (mock) Kamailio over jsonrpcs/HTTP to `dlg.terminate_dlg` the cut call by Call-ID, From-tag
//! and To-tag, and counts the outcome in `/metrics`.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use rtpedge::ng::Value;

#[path = "support/http.rs"]
mod http_client;
use http_client::http;
#[path = "support/daemon.rs"]
mod daemon;
use daemon::{Daemon, sdp};

/// Accepts one request; returns its body; answers a JSON-RPC result.
fn mock_kamailio(l: TcpListener) -> std::thread::JoinHandle<(String, String)> {
    std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("no dlg.terminate_dlg request within 15 s: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    let reply = r#"{"jsonrpc":"2.0","result":"Dialog terminated","id":1}"#;
                    write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                        reply.len()
                    )
                    .unwrap();
                    return (head.to_string(), body.to_string());
                }
            }
            assert!(n > 0, "connection closed early");
        }
    })
}

#[test]
fn a_call_cut_for_lack_of_credit_has_its_sip_dialog_ended() {
    let kam = TcpListener::bind("127.0.0.1:0").unwrap();
    let kam_addr = kam.local_addr().unwrap();
    let got = mock_kamailio(kam);
    let d = Daemon::builder("dlg-end", 22292, "44000-44499")
        .config(format!(
            "[billing]\nend_dialog_url = \"http://{kam_addr}/RPC\"\n"
        ))
        .start();
    let c = d.client();
    d.prepaid_acme("t", 1);
    let (a, b) = (
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    c.offer(
        "dlg-cut@test",
        "from-tag-1",
        &sdp(a.local_addr().unwrap().port()),
        &[("account", Value::from("acme"))],
    )
    .unwrap();
    c.answer(
        "dlg-cut@test",
        "from-tag-1",
        "to-tag-2",
        &sdp(b.local_addr().unwrap().port()),
        &[],
    )
    .unwrap();
    // One unit of credit = one second; the cut follows, then the RPC.
    let (head, body) = got.join().unwrap();
    assert!(head.starts_with("POST /RPC HTTP/1.1"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["method"], "dlg.terminate_dlg");
    assert_eq!(
        v["params"],
        serde_json::json!(["dlg-cut@test", "from-tag-1", "to-tag-2"])
    );
    assert!(v["id"].is_u64(), "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = http(d.http, "GET", "/metrics", "");
        if m.contains("rtpedge_dialog_end_total{result=\"ok\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "not counted: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
