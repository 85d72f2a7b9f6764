//! External billing over the event channel, end to end: the daemon runs with `--billing
//! external`; a billing system (the channel's own client, connected with role `billing` and
//! subscribed to call events) grants and denies credit, and pushes EXHAUSTED. Asserts: a
//! RESERVE per slice, the call cut when the billing system denies the next slice and when it
//! pushes EXHAUSTED, USAGE reports, `call` events (answered, ended with reason and CDR) for
//! subscribers, and the CDRs' end reasons.

use std::time::{Duration, Instant};

use rtpedge::channel::{Body, ChannelClient, ClientConfig, ClientEvent, Frame};
use serde_json::json;

#[path = "support/http.rs"]
mod http_client;
use http_client::http;
#[path = "support/daemon.rs"]
mod daemon;
use daemon::Daemon;

fn start() -> Daemon {
    Daemon::builder("extbill", 22280, "50000-50999")
        .args(["--billing", "external"])
        .start()
}

fn call(d: &Daemon, id: &str) {
    d.billed_call(id, 7000, 7002);
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
    d.prepaid_acme("ps", 0);
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
        // The CDR's charge is the billing system's, not the local tariff's: what it granted
        // (30, of which about 0.3 s were used) until it confirms the final charge.
        assert_eq!(ended.payload["cdr"]["charge"], 30, "{:?}", ended.payload);
        let charged = billing
            .request(Body::new(
                "billing",
                "CHARGED",
                json!({"call_id": "ext-2", "charge": 1}),
            ))
            .unwrap();
        let answer = wait_for(&mut billing, &mut seen, |f| f.correlation == Some(charged)).await;
        assert_eq!(answer.code, None, "{answer:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, cdr) = http(d.http, "GET", "/v1/cdrs?call_id=ext-2", "");
            let v: serde_json::Value = serde_json::from_str(&cdr).unwrap();
            if v[0]["charge"] == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "CDR not re-written: {cdr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
