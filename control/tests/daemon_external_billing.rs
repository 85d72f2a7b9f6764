//! External billing over the event channel, end to end: the daemon runs with `--billing
//! external`; a billing system (the channel's own client, connected with role `billing` and
//! subscribed to call events) grants and denies credit, and pushes EXHAUSTED. Asserts: a
//! RESERVE per slice, the call cut when the billing system denies the next slice and when it
//! pushes EXHAUSTED, USAGE reports, `call` events (answered, ended with reason and CDR) for
//! subscribers, and the CDRs' end reasons.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rtpedge::{
    channel::{Body, ChannelClient, ClientConfig, ClientEvent, Frame},
    ng::{NgClient, Value},
};
use serde_json::json;

struct Daemon {
    child: Child,
    ng: SocketAddr,
    http: SocketAddr,
    ws: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> Daemon {
    let port = 22280u16;
    let dir = std::env::temp_dir().join(format!("rtpedge-extbill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ng: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", port + 10000).parse().unwrap();
    let ws: SocketAddr = format!("127.0.0.1:{}", port + 20000).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_rtpedge"))
        .args([
            "--ng",
            &ng.to_string(),
            "--http",
            &http.to_string(),
            "--ws",
            &ws.to_string(),
        ])
        .args([
            "--ports",
            "50000-50999",
            "--no-xdp",
            "--workers",
            "1",
            "--billing",
            "external",
        ])
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
        ws,
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

#[path = "support/http.rs"]
mod http_client;
use http_client::http;

fn sdp(port: u16) -> Vec<u8> {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n")
        .into_bytes()
}

fn call(d: &Daemon, id: &str) {
    let ng = NgClient::new(d.ng)
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    ng.offer(id, "a", &sdp(7000), &[("account", Value::from("acme"))])
        .unwrap();
    ng.answer(id, "a", "b", &sdp(7002), &[]).unwrap();
}

/// Events until one matches `want` (within 10 s); the others are kept in `seen`.
async fn wait_for(
    client: &mut ChannelClient,
    seen: &mut Vec<Frame>,
    want: impl Fn(&Frame) -> bool,
) -> Frame {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .expect("the awaited event did not arrive within 10 s")
            .expect("channel");
        let frame = match ev {
            ClientEvent::Request(f)
            | ClientEvent::Message(f)
            | ClientEvent::Response(f)
            | ClientEvent::Error(f) => f,
            _ => continue,
        };
        if want(&frame) {
            return frame;
        }
        seen.push(frame);
    }
}

fn is(f: &Frame, package: &str, action: &str) -> bool {
    f.package.as_deref() == Some(package) && f.action.as_deref() == Some(action)
}

fn metric(d: &Daemon, name: &str) -> Option<u64> {
    let (_, body) = http(d.http, "GET", "/metrics", "");
    body.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn an_external_billing_system_grants_denies_and_exhausts_credit() {
    let d = start();
    for (path, body) in [
        (
            "/v1/tariffs/ps",
            r#"{"per_minute": 60, "per_kilobyte": 0, "increment_s": 1, "connection_fee": 0}"#,
        ),
        (
            "/v1/accounts/acme",
            r#"{"balance": 0, "tariff": "ps", "mode": "prepaid"}"#,
        ),
    ] {
        let (s, b) = http(d.http, "PUT", path, body);
        assert_eq!(s, 200, "{b}");
    }
    assert_eq!(
        metric(&d, "rtpedge_billing_connected"),
        Some(0),
        "no billing system yet"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = ClientConfig::new(format!("ws://{}/", d.ws));
        cfg.role = Some("billing".into());
        cfg.subscribe = vec!["call".into()];
        let mut billing = ChannelClient::connect(cfg)
            .await
            .expect("connect as the billing system");
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&d, "rtpedge_billing_connected") != Some(1) {
            assert!(
                Instant::now() < deadline,
                "the daemon did not see the billing system"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut seen = Vec::new();

        // Call 1: a 2 s grant, then a denial: the call ends when the grant runs out.
        call(&d, "ext-1");
        let reserve = wait_for(&mut billing, &mut seen, |f| is(f, "billing", "RESERVE")).await;
        assert_eq!(reserve.payload["call_id"], "ext-1");
        assert_eq!(reserve.payload["account"], "acme");
        assert_eq!(reserve.payload["initial"], true);
        billing
            .respond(
                reserve.seq.unwrap(),
                Body::new(
                    "billing",
                    "GRANT",
                    json!({"seconds": 2, "bytes": 0, "amount": 2}),
                ),
            )
            .unwrap();
        let granted_at = Instant::now();
        let renewal = wait_for(&mut billing, &mut seen, |f| is(f, "billing", "RESERVE")).await;
        assert_eq!(renewal.payload["initial"], false);
        billing
            .respond(
                renewal.seq.unwrap(),
                Body::new("billing", "DENY", json!({})).with_code(402, "no credit"),
            )
            .unwrap();
        let ended = wait_for(&mut billing, &mut seen, |f| {
            is(f, "call", "NOTIFY") && f.payload["event"] == "ended"
        })
        .await;
        assert!(
            granted_at.elapsed() >= Duration::from_millis(1900),
            "ran to the end of its grant"
        );
        assert_eq!(ended.payload["call_id"], "ext-1");
        assert_eq!(ended.payload["end_reason"], "credit-exhausted");
        assert_eq!(ended.payload["cdr"]["charge"], 2);
        assert!(
            seen.iter().any(|f| is(f, "call", "NOTIFY")
                && f.payload["event"] == "answered"
                && f.payload["call_id"] == "ext-1"),
            "subscribers saw the answer"
        );
        let usage = wait_for(&mut billing, &mut seen, |f| {
            is(f, "billing", "USAGE") && f.payload["is_final"] == true
        })
        .await;
        assert_eq!(usage.payload["call_id"], "ext-1");
        assert_eq!(usage.payload["charge"], 2);

        // Call 2: a long grant, then EXHAUSTED pushed by the billing system: cut at once.
        call(&d, "ext-2");
        let reserve = wait_for(&mut billing, &mut seen, |f| {
            is(f, "billing", "RESERVE") && f.payload["call_id"] == "ext-2"
        })
        .await;
        billing
            .respond(
                reserve.seq.unwrap(),
                Body::new(
                    "billing",
                    "GRANT",
                    json!({"seconds": 30, "bytes": 0, "amount": 30}),
                ),
            )
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let push = billing
            .request(Body::new(
                "billing",
                "EXHAUSTED",
                json!({"call_id": "ext-2"}),
            ))
            .unwrap();
        let answer = wait_for(&mut billing, &mut seen, |f| {
            f.correlation == Some(push) && f.package.as_deref() == Some("billing")
        })
        .await;
        assert_eq!(answer.payload["calls"], 1, "{answer:?}");
        let ended = wait_for(&mut billing, &mut seen, |f| {
            is(f, "call", "NOTIFY") && f.payload["event"] == "ended"
        })
        .await;
        assert_eq!(ended.payload["call_id"], "ext-2");
        assert_eq!(ended.payload["end_reason"], "credit-exhausted");
        // An unknown action is refused precisely and the session goes on.
        let bad = billing
            .request(Body::new("billing", "FROBNICATE", json!({})))
            .unwrap();
        let err = wait_for(&mut billing, &mut seen, |f| f.correlation == Some(bad)).await;
        assert_eq!(err.code, Some(501), "{err:?}");
    });
    // CDRs are written asynchronously (batched by the writer): poll briefly.
    let deadline = Instant::now() + Duration::from_secs(2);
    let cdr = loop {
        let (_, cdr) = http(d.http, "GET", "/v1/cdrs?call_id=ext-2", "");
        if cdr.contains("credit-exhausted") || Instant::now() > deadline {
            break cdr;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(cdr.contains("credit-exhausted"), "{cdr}");
}
