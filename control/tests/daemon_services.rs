//! Mid-call services through the daemon with real UDP media on loopback: a running call gets a
//! recorder fork (the recorder receives every packet of both directions, byte for byte, from
//! the legs' own ports), and an added party hears both others and is heard by both, without a
//! gap in the media that was already flowing. Tickets are signed here with the key whose
//! public half the daemon's `[auth] ticket_keys` trusts; tokens are added through the API.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rtpedge::billing::auth::{Service, Signer, TicketClaims};

#[path = "support/http.rs"]
mod http_client;
use http_client::http;
#[path = "support/daemon.rs"]
mod daemon;
use daemon::{Daemon, media_port};

const SEED: [u8; 32] = [42u8; 32];

/// A daemon that trusts tickets signed with `SEED`, with the prepaid account `acme`.
fn start(ng_port: u16, ports: &str) -> Daemon {
    let d = Daemon::builder("services", ng_port, ports)
        .config(format!(
            "[auth]\nticket_keys = [\"{}\"]\n",
            Signer::from_seed(SEED).public_key_hex()
        ))
        .args(["--delete-delay", "1"])
        .start();
    d.prepaid_acme("t", 100000);
    d
}

/// An RTP packet whose payload is unique to (ssrc, seq).
fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    for i in 0..160u32 {
        p.push((ssrc.wrapping_mul(31) ^ (seq as u32).wrapping_mul(7) ^ i) as u8);
    }
    p
}

fn ssrc_seq(p: &[u8]) -> (u32, u16) {
    (
        u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

struct Call {
    caller: UdpSocket,
    callee: UdpSocket,
    /// Where the caller sends (the leg facing it), and the callee.
    to_caller_leg: SocketAddr,
    to_callee_leg: SocketAddr,
}

fn answered_call(d: &Daemon, call_id: &str) -> Call {
    let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
    let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (offer, answer) = d.billed_call(
        call_id,
        caller.local_addr().unwrap().port(),
        callee.local_addr().unwrap().port(),
    );
    let leg = |sdp: &[u8]| SocketAddr::from(([127, 0, 0, 1], media_port(sdp)));
    Call {
        caller,
        callee,
        to_caller_leg: leg(answer.get_bytes("sdp").unwrap()),
        to_callee_leg: leg(offer.get_bytes("sdp").unwrap()),
    }
}

/// Gives `acme` `count` usage tokens.
fn add_tokens(d: &Daemon, count: u32) {
    let (s, a) = http(
        d.http,
        "POST",
        "/v1/accounts/acme/tokens",
        &format!(r#"{{"count": {count}}}"#),
    );
    assert_eq!(s, 200, "{a}");
}

/// A ticket for `acme` signed with `SEED` (trusted by the daemon), valid for a minute.
fn ticket(call_id: &str, service: Service, nonce: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sign_ticket(SEED, call_id, service, now + 60, nonce)
}

/// A ticket signed with a key the daemon does not trust.
fn forged_ticket(call_id: &str, service: Service, nonce: &str) -> String {
    sign_ticket([1u8; 32], call_id, service, u64::MAX / 2, nonce)
}

fn sign_ticket(seed: [u8; 32], call_id: &str, service: Service, exp: u64, nonce: &str) -> String {
    Signer::from_seed(seed)
        .sign_ticket(&TicketClaims {
            call_id: call_id.into(),
            account: "acme".into(),
            service,
            params: serde_json::Map::new(),
            exp,
            nonce: nonce.into(),
        })
        .unwrap()
}

fn post_service(d: &Daemon, call_id: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (s, b) = http(
        d.http,
        "POST",
        &format!("/v1/calls/{call_id}/services"),
        &body.to_string(),
    );
    (
        s,
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}")),
    )
}

/// Everything a socket receives until `stop` is set and it has been quiet for 300 ms.
fn collect(
    sock: UdpSocket,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(SocketAddr, Vec<u8>)>> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => out.push((from, buf[..n].to_vec())),
                Err(_) if stop.load(Ordering::Relaxed) => return out,
                Err(_) => {}
            }
        }
    })
}

/// Sends RTP with `ssrc` every 4 ms until `stop`; returns every packet sent.
fn stream(
    sock: UdpSocket,
    to: SocketAddr,
    ssrc: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut sent = Vec::new();
        let mut seq = 1u16;
        while !stop.load(Ordering::Relaxed) {
            let p = rtp(ssrc, seq);
            sock.send_to(&p, to).unwrap();
            sent.push(p);
            seq = seq.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(4));
        }
        sent
    })
}

#[test]
fn a_running_call_forks_to_a_recorder_byte_for_byte() {
    let d = start(22290, "47000-47499");
    let call = answered_call(&d, "svc-fork");
    let recorder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rec_addr = recorder.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rec_rx = collect(recorder, Arc::clone(&stop));
    let callee_rx = collect(call.callee.try_clone().unwrap(), Arc::clone(&stop));
    let caller_rx = collect(call.caller.try_clone().unwrap(), Arc::clone(&stop));
    let fork_body = serde_json::json!({
        "ticket": ticket("svc-fork", Service::Fork, "f1"),
        "service": "fork",
        "recorder": rec_addr.to_string(),
    });
    // No tokens yet: a clear refusal, and nothing is forked.
    let (s, e) = post_service(&d, "svc-fork", fork_body.clone());
    assert_eq!((s, e["code"].as_str()), (402, Some("no-tokens")), "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("no usage tokens"),
        "{e}"
    );
    add_tokens(&d, 2);
    // Media flows both ways before, during and after the fork is inserted.
    let a_tx = stream(call.caller, call.to_caller_leg, 0xA, Arc::clone(&stop));
    let b_tx = stream(call.callee, call.to_callee_leg, 0xB, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    let (s, out) = post_service(&d, "svc-fork", fork_body);
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["tokens_left"], 1, "{out}");
    assert_eq!(out["legs"], 2, "{out}");
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    let (a_sent, b_sent) = (a_tx.join().unwrap(), b_tx.join().unwrap());
    let recorded = rec_rx.join().unwrap();
    let (at_callee, at_caller) = (callee_rx.join().unwrap(), caller_rx.join().unwrap());
    // Every recorded packet is one that was sent, unchanged, from the leg it arrived on.
    let sent: HashMap<(u32, u16), &Vec<u8>> = a_sent
        .iter()
        .chain(b_sent.iter())
        .map(|p| (ssrc_seq(p), p))
        .collect();
    assert!(
        recorded.len() > 100,
        "recorder got {} packets",
        recorded.len()
    );
    for (from, p) in &recorded {
        let key = ssrc_seq(p);
        assert_eq!(
            sent.get(&key).map(|s| s.as_slice()),
            Some(p.as_slice()),
            "byte-identical copy of {key:?}"
        );
        let leg = if key.0 == 0xA {
            call.to_caller_leg
        } else {
            call.to_callee_leg
        };
        assert_eq!(*from, leg, "sent from the leg that received it");
    }
    // From the first forked packet of each direction on, nothing was missed.
    for ssrc in [0xA, 0xB] {
        let seqs: Vec<u16> = recorded
            .iter()
            .map(|(_, p)| ssrc_seq(p))
            .filter(|k| k.0 == ssrc)
            .map(|k| k.1)
            .collect();
        let first = *seqs.first().expect("both directions recorded");
        let last_sent = sent
            .keys()
            .filter(|k| k.0 == ssrc)
            .map(|k| k.1)
            .max()
            .unwrap();
        assert_eq!(
            seqs,
            (first..=last_sent).collect::<Vec<_>>(),
            "every packet of {ssrc:#x} after the fork, in order"
        );
        assert!(first > 10, "the fork started mid-call");
    }
    // The parties kept hearing each other, without a gap at the insertion.
    for (rx, ssrc, n) in [
        (&at_callee, 0xA, a_sent.len()),
        (&at_caller, 0xB, b_sent.len()),
    ] {
        let seqs: Vec<u16> = rx.iter().map(|(_, p)| ssrc_seq(p).1).collect();
        assert_eq!(
            seqs,
            (1..=n as u16).collect::<Vec<_>>(),
            "{ssrc:#x} uninterrupted"
        );
    }
    // Refusals with distinct statuses and codes.
    let (s, e) = post_service(
        &d,
        "nope",
        serde_json::json!({"ticket": ticket("nope", Service::Fork, "f2"), "recorder": rec_addr.to_string()}),
    );
    assert_eq!((s, e["code"].as_str()), (404, Some("no-such-call")), "{e}");
    let forged = forged_ticket("svc-fork", Service::Fork, "f3");
    let (s, e) = post_service(
        &d,
        "svc-fork",
        serde_json::json!({"ticket": forged, "recorder": rec_addr.to_string()}),
    );
    assert_eq!((s, e["code"].as_str()), (401, Some("bad-signature")), "{e}");
    let (s, e) = post_service(&d, "svc-fork", serde_json::json!({"service": "fork"}));
    assert_eq!(s, 400, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("ticket"), "{e}");
    let (_, acct) = http(d.http, "GET", "/v1/accounts/acme", "");
    assert!(
        acct.contains("\"tokens\":1"),
        "refusals took no token: {acct}"
    );
    let (_, m) = http(d.http, "GET", "/metrics", "");
    for line in [
        "rtpedge_service_requests_total{service=\"fork\",outcome=\"applied\"} 1",
        "rtpedge_service_requests_total{service=\"fork\",outcome=\"no-tokens\"} 1",
        "rtpedge_service_requests_total{service=\"unknown\",outcome=\"no-such-call\"} 1",
        "rtpedge_service_requests_total{service=\"unknown\",outcome=\"bad-signature\"} 1",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    d.delete_billed_call("svc-fork");
    let c = d.cdr("svc-fork");
    assert_eq!(c["services"], serde_json::json!(["fork"]), "{c}");
}

#[test]
fn an_added_party_hears_both_and_is_heard_by_both() {
    let d = start(22291, "47500-47999");
    add_tokens(&d, 1);
    let call = answered_call(&d, "svc-party");
    let third = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_third = Arc::new(AtomicBool::new(false));
    let callee_rx = collect(call.callee.try_clone().unwrap(), Arc::clone(&stop));
    let caller_rx = collect(call.caller.try_clone().unwrap(), Arc::clone(&stop));
    let third_rx = collect(third.try_clone().unwrap(), Arc::clone(&stop));
    let a_tx = stream(call.caller, call.to_caller_leg, 0xA, Arc::clone(&stop));
    let b_tx = stream(call.callee, call.to_callee_leg, 0xB, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    let (s, out) = post_service(
        &d,
        "svc-party",
        serde_json::json!({
            "ticket": ticket("svc-party", Service::AddParty, "p1"),
            "service": "add-party",
            "remote": third.local_addr().unwrap().to_string(),
        }),
    );
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["party"], "p1", "{out}");
    assert_eq!(out["tokens_left"], 0, "{out}");
    let local: SocketAddr = out["local"].as_str().unwrap().parse().unwrap();
    assert!(
        out["sdp"]
            .as_str()
            .unwrap()
            .contains(&format!("m=audio {} RTP/AVP 0", local.port())),
        "{out}"
    );
    let c_tx = stream(third, local, 0xC, Arc::clone(&stop_third));
    std::thread::sleep(Duration::from_millis(600));
    stop_third.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (a_sent, b_sent, c_sent) = (
        a_tx.join().unwrap(),
        b_tx.join().unwrap(),
        c_tx.join().unwrap(),
    );
    let (at_a, at_b, at_c) = (
        caller_rx.join().unwrap(),
        callee_rx.join().unwrap(),
        third_rx.join().unwrap(),
    );
    let count = |rx: &[(SocketAddr, Vec<u8>)], ssrc: u32| {
        rx.iter().filter(|(_, p)| ssrc_seq(p).0 == ssrc).count()
    };
    assert!(
        count(&at_c, 0xA) > 50 && count(&at_c, 0xB) > 50,
        "the new party hears both"
    );
    assert!(
        count(&at_a, 0xC) > 50 && count(&at_b, 0xC) > 50,
        "both hear the new party"
    );
    // Each hears a sender unchanged, from the leg facing it.
    for (_, p) in &at_c {
        assert!(a_sent.contains(p) || b_sent.contains(p), "unchanged");
    }
    assert!(at_c.iter().all(|(from, _)| *from == local));
    // A and B never lost a packet of each other's across the re-splice.
    assert_eq!(count(&at_b, 0xA), a_sent.len(), "A to B uninterrupted");
    assert_eq!(count(&at_a, 0xB), b_sent.len(), "B to A uninterrupted");
    assert_eq!(
        count(&at_a, 0xC) + count(&at_b, 0xC) > 0,
        !c_sent.is_empty()
    );
    // The live-call view counts the new party's media.
    let (_, view) = http(d.http, "GET", "/v1/calls/svc-party", "");
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    let party = &view["media"][0]["parties"][0];
    assert_eq!(party["party"], "p1", "{view}");
    assert_eq!(party["local"], local.to_string(), "{view}");
    assert_eq!(party["packets"], c_sent.len(), "{view}");
    // No token left: the next service is refused.
    let (s, e) = post_service(
        &d,
        "svc-party",
        serde_json::json!({"ticket": ticket("svc-party", Service::QosUpgrade, "q1"), "service": "qos"}),
    );
    assert_eq!((s, e["code"].as_str()), (402, Some("no-tokens")), "{e}");
    d.delete_billed_call("svc-party");
    let c = d.cdr("svc-party");
    assert_eq!(c["services"], serde_json::json!(["add-party"]), "{c}");
}

/// The event channel: `call`/`SERVICE` requests are answered like the HTTP route, and every
/// service applied is announced to `call` subscribers.
#[test]
fn a_service_over_the_event_channel_is_answered_and_announced() {
    use rtpedge::channel::{Body, ChannelClient, ClientConfig, ClientEvent, Frame};
    let d = start(22293, "48500-48999");
    add_tokens(&d, 1);
    let _call = answered_call(&d, "svc-ws");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = ClientConfig::new(format!("ws://{}/", d.ws));
        cfg.role = Some("operator".into());
        cfg.subscribe = vec!["call".into()];
        let mut client = ChannelClient::connect(cfg).await.expect("connect");
        // Frames not yet asked for are kept (the event may come before the answer).
        let mut seen: Vec<Frame> = Vec::new();
        let next = async |client: &mut ChannelClient,
                          seen: &mut Vec<Frame>,
                          want: &dyn Fn(&Frame) -> bool| {
            if let Some(i) = seen.iter().position(want) {
                return seen.remove(i);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let ev = tokio::time::timeout_at(deadline, client.next_event())
                    .await
                    .expect("no such frame within 10 s")
                    .expect("channel");
                if let ClientEvent::Request(f)
                | ClientEvent::Message(f)
                | ClientEvent::Response(f)
                | ClientEvent::Error(f) = ev
                {
                    if want(&f) {
                        return f;
                    }
                    seen.push(f);
                }
            }
        };
        // A forged ticket: an error frame with the HTTP status as code.
        let forged = forged_ticket("svc-ws", Service::QosUpgrade, "w0");
        let seq = client
            .request(Body::new(
                "call",
                "SERVICE",
                serde_json::json!({"call_id": "svc-ws", "ticket": forged}),
            ))
            .unwrap();
        let err = next(&mut client, &mut seen, &|f: &Frame| {
            f.correlation == Some(seq)
        })
        .await;
        assert_eq!(err.code, Some(401), "{err:?}");
        assert!(
            err.reason
                .as_deref()
                .unwrap_or("")
                .contains("bad-signature"),
            "{err:?}"
        );
        // A genuine one: the answer, and the event.
        let seq = client
            .request(Body::new(
                "call",
                "SERVICE",
                serde_json::json!({
                    "call_id": "svc-ws",
                    "ticket": ticket("svc-ws", Service::QosUpgrade, "w1"),
                    "service": "qos",
                    "dscp": 34,
                }),
            ))
            .unwrap();
        let answer = next(&mut client, &mut seen, &|f: &Frame| {
            f.correlation == Some(seq)
        })
        .await;
        assert_eq!(answer.code, None, "{answer:?}");
        assert_eq!(answer.payload["dscp"], 34, "{answer:?}");
        assert_eq!(answer.payload["tokens_left"], 0, "{answer:?}");
        let ev = next(&mut client, &mut seen, &|f: &Frame| {
            f.package.as_deref() == Some("call") && f.payload["event"] == "service"
        })
        .await;
        assert_eq!(ev.payload["call_id"], "svc-ws");
        assert_eq!(ev.payload["service"], "qos-upgrade");
        assert_eq!(ev.payload["account"], "acme");
    });
    let (_, call) = http(d.http, "GET", "/v1/calls/svc-ws", "");
    assert!(call.contains("\"state\":\"answered\""), "{call}");
}
