//! The reliable event channel over real WebSockets on 127.0.0.1 (ephemeral ports): the client
//! against the server, raw WebSocket peers for what the client would never send, and a TCP
//! proxy that black-holes and cuts connections.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;
use futures_util::{SinkExt, StreamExt};
use rtpedge::channel::{
    Body, ChannelClient, ChannelServer, ClientConfig, ClientError, ClientEvent, Frame, FrameType,
    HubError, HubEvent, RequestFailure, SUBPROTOCOL, SendError, ServerConfig, SessionConfig,
    SessionId, Target,
    frame::{action, code, package},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::AbortHandle,
    time::{sleep, timeout},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

const WAIT: Duration = Duration::from_secs(5);

fn server_config() -> ServerConfig {
    ServerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        session: SessionConfig {
            ack_delay: Duration::from_millis(5),
            ..SessionConfig::default()
        },
        ..ServerConfig::default()
    }
}

fn client_config(addr: SocketAddr) -> ClientConfig {
    let mut cfg = ClientConfig::new(format!("ws://{addr}/"));
    cfg.session.ack_delay = Duration::from_millis(5);
    cfg.reconnect_backoff = Duration::from_millis(20);
    cfg
}

fn n_of(payload: &Value) -> u64 {
    payload["n"].as_u64().unwrap_or(u64::MAX)
}

/// The next hub event, skipping those `keep` rejects.
async fn hub_event(rx: &Receiver<HubEvent>, keep: impl Fn(&HubEvent) -> bool) -> HubEvent {
    let deadline = Instant::now() + WAIT;
    let mut skipped = Vec::new();
    loop {
        while let Ok(ev) = rx.try_recv() {
            if keep(&ev) {
                return ev;
            }
            skipped.push(ev);
        }
        assert!(
            Instant::now() < deadline,
            "no matching hub event in time; skipped {skipped:?}"
        );
        sleep(Duration::from_millis(1)).await;
    }
}

/// The next client event, skipping those `keep` rejects.
async fn client_event(c: &mut ChannelClient, keep: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, c.next_event())
            .await
            .expect("client event in time")
            .expect("client alive");
        if keep(&ev) {
            return ev;
        }
    }
}

/// Lets the client do I/O for a while.
async fn pump(c: &mut ChannelClient, d: Duration) -> Vec<ClientEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(r) = tokio::time::timeout_at(deadline, c.next_event()).await {
        out.push(r.expect("client alive"));
    }
    out
}

fn any(_: &HubEvent) -> bool {
    true
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket peers

type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn raw_connect(addr: SocketAddr) -> Raw {
    let mut req = format!("ws://{addr}/")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    connect_async(req).await.expect("upgrade").0
}

async fn raw_send(ws: &mut Raw, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}

/// The next text frame from the server (pings are answered by tungstenite).
async fn raw_frame(ws: &mut Raw) -> Frame {
    loop {
        let m = timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
            .expect("open")
            .expect("read");
        if let Message::Text(t) = m {
            return Frame::parse(&t).expect("server frames parse");
        }
    }
}

/// The next frame that is not a bare ack.
async fn raw_data_frame(ws: &mut Raw) -> Frame {
    loop {
        let f = raw_frame(ws).await;
        if f.kind != FrameType::Ack {
            return f;
        }
    }
}

async fn raw_open(addr: SocketAddr, connect: &str) -> (Raw, Frame) {
    let mut ws = raw_connect(addr).await;
    raw_send(&mut ws, connect).await;
    let resp = raw_frame(&mut ws).await;
    (ws, resp)
}

// ---------------------------------------------------------------------------------------------
// A TCP proxy whose connections can be black-holed (bytes dropped) and cut.

struct Link {
    paused: Arc<AtomicBool>,
    tasks: Vec<AbortHandle>,
}

struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<Link>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let l2 = links.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let paused = Arc::new(AtomicBool::new(false));
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let a = tokio::spawn(pipe(dr, uw, paused.clone())).abort_handle();
                let b = tokio::spawn(pipe(ur, dw, paused.clone())).abort_handle();
                l2.lock().expect("lock").push(Link {
                    paused,
                    tasks: vec![a, b],
                });
            }
        });
        Proxy { addr, links }
    }

    /// Existing connections silently drop every byte from now on (both directions).
    fn black_hole(&self) {
        for l in self.links.lock().expect("lock").iter() {
            l.paused.store(true, Ordering::SeqCst);
        }
    }

    /// Existing connections are closed (sockets dropped, unread data and all).
    fn cut(&self) {
        for l in self.links.lock().expect("lock").drain(..) {
            for t in l.tasks {
                t.abort();
            }
        }
    }
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if paused.load(Ordering::SeqCst) {
                    // A black hole does not pass the end of the stream on either: the far
                    // side keeps a connection that will never carry anything again.
                    std::future::pending::<()>().await;
                }
                return;
            }
            Ok(n) => {
                if paused.load(Ordering::SeqCst) {
                    continue;
                }
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Request/response correlation both ways, messages, and cumulative acks that empty both
/// windows.
#[tokio::test]
async fn ack_flow_requests_responses_and_messages() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let (hub, rx) = (server.hub(), server.events());
    assert!(!hub.billing_connected());
    assert_eq!(
        hub.request(
            &Target::Billing,
            Body::new("billing", "RESERVE", Value::Null)
        ),
        Err(HubError::NoBillingSystem)
    );
    let mut cfg = client_config(server.local_addr());
    cfg.role = Some("billing".into());
    let mut c = ChannelClient::connect(cfg).await.expect("connect");
    let sid = c.session_id().clone();
    match hub_event(&rx, any).await {
        HubEvent::Connected {
            session,
            role,
            resumed,
            previous,
        } => {
            assert_eq!(session, sid);
            assert_eq!(role.as_deref(), Some("billing"));
            assert!(!resumed);
            assert_eq!(previous, None);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(hub.billing_connected());
    assert_eq!(hub.billing_session(), Some(sid.clone()));

    // Daemon → billing system: RESERVE, answered by GRANT.
    let reserve = hub
        .request(
            &Target::Billing,
            Body::new("billing", "RESERVE", json!({"call": "c1", "seconds": 60})),
        )
        .expect("request");
    assert_eq!(reserve.seq, 1);
    let req = match client_event(&mut c, |_| true).await {
        ClientEvent::Request(f) => f,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(req.seq, Some(1));
    assert_eq!(req.session.as_ref(), Some(&sid));
    assert!(req.is("billing", "RESERVE"));
    c.respond(1, Body::new("billing", "GRANT", json!({"seconds": 60})))
        .expect("respond");
    // Billing system → daemon: a pushed EXHAUSTED message and a request.
    c.message(Body::new("billing", "EXHAUSTED", json!({"account": "a1"})))
        .expect("message");
    let topup_seq = c
        .request(Body::new("billing", "TOPUP", json!({"account": "a1"})))
        .expect("request");
    pump(&mut c, Duration::from_millis(30)).await;
    match hub_event(&rx, any).await {
        HubEvent::Response { request, body } => {
            assert_eq!(request, reserve);
            assert_eq!(body.action, "GRANT");
            assert_eq!(body.payload["seconds"], 60);
        }
        other => panic!("unexpected {other:?}"),
    }
    match hub_event(&rx, any).await {
        HubEvent::Message(m) => {
            assert_eq!(m.seq, 2);
            assert_eq!(m.body.action, "EXHAUSTED");
            assert_eq!(m.role.as_deref(), Some("billing"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let topup = match hub_event(&rx, any).await {
        HubEvent::Request(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(topup.seq, topup_seq);
    hub.respond(
        &topup.request_ref(),
        Body::new("billing", "TOPUP", json!({"ok": true})),
    )
    .expect("respond");
    match client_event(&mut c, |_| true).await {
        ClientEvent::Response(f) => {
            assert_eq!(f.correlation, Some(topup_seq));
            assert_eq!(f.payload["ok"], true);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.pending_requests(), 0);
    // Acks: both windows drain (bare acks after the ack delay).
    pump(&mut c, Duration::from_millis(40)).await;
    let info = hub.session(&sid).expect("session");
    assert_eq!(info.unacked, 0, "server window empty: {info:?}");
    assert_eq!(info.received, 3);
    assert_eq!(info.pending_requests, 0);
    assert_eq!(c.session().unacked(), 0, "client window empty");
    assert!(info.stats.acks + c.session().stats().acks > 0);
}

/// Messages flow both ways; the proxy black-holes the connection (frames are lost in both
/// directions) and then cuts it; the client reconnects and resumes. Every message arrives
/// exactly once, in order, on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_reconnect_resume_exactly_once_in_order() {
    const N: u64 = 300;
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let (hub, rx) = (server.hub(), server.events());
    let proxy = Proxy::start(server.local_addr()).await;
    let mut c = ChannelClient::connect(client_config(proxy.addr))
        .await
        .expect("connect");
    let sid = c.session_id().clone();

    // The daemon side sends from a plain thread, as the daemon's control thread would.
    let sender_hub = hub.clone();
    let target = Target::Session(sid.clone());
    let sender = std::thread::spawn(move || {
        let mut n = 1;
        while n <= N {
            match sender_hub.message(&target, Body::new("call", "NOTIFY", json!({ "n": n }))) {
                Ok(_) => n += 1,
                Err(HubError::Session {
                    source: SendError::WindowFull { .. },
                    ..
                }) => {}
                Err(e) => panic!("hub send: {e}"),
            }
            std::thread::sleep(Duration::from_micros(700));
        }
    });

    let start = Instant::now();
    let (mut sent, mut at_client, mut at_hub) = (0u64, Vec::new(), Vec::new());
    let (mut holed_at, mut cut, mut resumed, mut disconnected) = (None, false, false, false);
    while at_client.len() < N as usize || at_hub.len() < N as usize {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "stalled: client got {}, hub got {}, sent {sent}",
            at_client.len(),
            at_hub.len()
        );
        if sent < N
            && c.message(Body::new("billing", "USAGE", json!({ "n": sent + 1 })))
                .is_ok()
        {
            sent += 1;
        }
        while let Ok(ev) = rx.try_recv() {
            if let HubEvent::Message(m) = ev {
                assert_eq!(m.session, sid);
                at_hub.push(n_of(&m.body.payload));
            }
        }
        if let Ok(r) = timeout(Duration::from_millis(1), c.next_event()).await {
            match r.expect("client") {
                ClientEvent::Message(f) => at_client.push(n_of(&f.payload)),
                ClientEvent::Resumed { session, .. } => {
                    assert_eq!(session, sid);
                    resumed = true;
                }
                ClientEvent::Disconnected { .. } => disconnected = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Fault injection, a third of the way in: frames vanish for 40 ms, then the cut.
        if holed_at.is_none() && sent >= N / 3 && at_client.len() >= (N / 3) as usize {
            proxy.black_hole();
            holed_at = Some(Instant::now());
        }
        if !cut && holed_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(40)) {
            proxy.cut();
            cut = true;
        }
    }
    sender.join().expect("sender");
    assert!(
        cut && disconnected && resumed,
        "the fault must have happened"
    );
    assert_eq!(at_client, (1..=N).collect::<Vec<_>>(), "server → client");
    assert_eq!(at_hub, (1..=N).collect::<Vec<_>>(), "client → server");
    let info = hub.session(&sid).expect("same session");
    assert!(
        info.stats.retransmitted > 0,
        "server retransmitted after resume: {info:?}"
    );
    assert!(
        c.session().stats().retransmitted > 0,
        "client retransmitted after resume: {:?}",
        c.session().stats()
    );
    // No duplicate reached either application (the sessions suppressed them, if any).
    assert_eq!(info.stats.delivered, N);
    assert_eq!(c.session().stats().delivered, N);
}

/// The client reconnects while the server still believes the old connection is alive (the
/// proxy black-holes it without closing): the new connection takes the session over.
#[tokio::test]
async fn resume_takes_over_a_connection_the_server_still_holds() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let (hub, rx) = (server.hub(), server.events());
    let proxy = Proxy::start(server.local_addr()).await;
    let mut c = ChannelClient::connect(client_config(proxy.addr))
        .await
        .expect("connect");
    let sid = c.session_id().clone();
    hub_event(&rx, |e| matches!(e, HubEvent::Connected { .. })).await;
    proxy.black_hole();
    // Sent into the void, both ways.
    hub.message(
        &Target::Session(sid.clone()),
        Body::new("call", "NOTIFY", json!({"n": 1})),
    )
    .expect("send");
    c.message(Body::new("billing", "USAGE", json!({"n": 1})))
        .expect("send");
    c.flush().await.expect("flush");
    sleep(Duration::from_millis(20)).await;
    c.abort_connection();
    let ev = client_event(&mut c, |e| matches!(e, ClientEvent::Resumed { .. })).await;
    assert_eq!(
        ev,
        ClientEvent::Resumed {
            session: sid.clone(),
            retransmit: 1
        }
    );
    match hub_event(&rx, any).await {
        HubEvent::Connected {
            session, resumed, ..
        } => {
            assert_eq!(session, sid);
            assert!(resumed);
        }
        other => panic!("unexpected {other:?}"),
    }
    match client_event(&mut c, |e| matches!(e, ClientEvent::Message(_))).await {
        ClientEvent::Message(f) => assert_eq!(n_of(&f.payload), 1),
        other => panic!("unexpected {other:?}"),
    }
    // The client writes only while driven: make sure its retransmission is out.
    c.flush().await.expect("flush");
    match hub_event(&rx, |e| matches!(e, HubEvent::Message(_))).await {
        HubEvent::Message(m) => assert_eq!(n_of(&m.body.payload), 1),
        other => panic!("unexpected {other:?}"),
    }
    let info = hub.session(&sid).expect("session");
    assert!(info.attached);
}

/// Resuming an unknown session: an explicit refusal (code 404, `resumed: false`) and a new
/// session that works.
#[tokio::test]
async fn resume_of_an_unknown_session_is_refused_with_a_new_session() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let rx = server.events();
    let (mut ws, resp) = raw_open(
        server.local_addr(),
        r#"{"type":"request","package":"session","action":"CONNECT","session":"0123deadbeef","ack":5,"payload":{"role":"billing","window":{"first":1,"next":4}}}"#,
    )
    .await;
    assert_eq!(resp.kind, FrameType::Response);
    assert!(resp.is(package::SESSION, action::CONNECT));
    assert_eq!(resp.seq, None, "the handshake is not sequenced");
    assert_eq!(resp.code, Some(code::UNKNOWN_SESSION));
    let reason = resp.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("unknown or expired session 0123deadbeef"),
        "{reason}"
    );
    assert_eq!(resp.payload["resumed"], false);
    assert_eq!(resp.payload["previous"], "0123deadbeef");
    let new_id = resp.session.clone().expect("new session id");
    assert_ne!(new_id.as_str(), "0123deadbeef");
    assert_eq!(resp.payload["session"], new_id.as_str());
    match hub_event(&rx, any).await {
        HubEvent::Connected {
            session,
            resumed,
            previous,
            ..
        } => {
            assert_eq!(session, new_id);
            assert!(!resumed);
            assert_eq!(
                previous.as_ref().map(SessionId::as_str),
                Some("0123deadbeef")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // The new session counts from 1.
    raw_send(
        &mut ws,
        r#"{"type":"message","seq":1,"package":"billing","action":"USAGE","payload":{"n":1}}"#,
    )
    .await;
    match hub_event(&rx, any).await {
        HubEvent::Message(m) => {
            assert_eq!((m.session, m.seq), (new_id, 1));
        }
        other => panic!("unexpected {other:?}"),
    }
    let ack = raw_frame(&mut ws).await;
    assert_eq!((ack.kind, ack.ack), (FrameType::Ack, Some(1)));
}

/// A session detached longer than its expiry is gone: the client gets a new session, its
/// unacknowledged frames back, and the daemon's pending request fails.
#[tokio::test]
async fn expired_session_is_replaced_and_losses_are_reported() {
    let mut cfg = server_config();
    cfg.session.expiry = Duration::from_millis(150);
    let server = ChannelServer::bind(cfg).await.expect("server");
    let (hub, rx) = (server.hub(), server.events());
    let mut c = ChannelClient::connect(client_config(server.local_addr()))
        .await
        .expect("connect");
    let old = c.session_id().clone();
    c.abort_connection();
    hub_event(&rx, |e| matches!(e, HubEvent::Disconnected { .. })).await;
    assert!(!hub.session(&old).expect("detached, kept").attached);
    let req = hub
        .request(
            &Target::Session(old.clone()),
            Body::new("billing", "RESERVE", Value::Null),
        )
        .expect("queued for the resume");
    for n in 1..=3 {
        c.message(Body::new("billing", "USAGE", json!({ "n": n })))
            .expect("queued");
    }
    match hub_event(&rx, |e| matches!(e, HubEvent::RequestFailed { .. })).await {
        HubEvent::RequestFailed { request, failure } => {
            assert_eq!(request, req);
            assert!(matches!(failure, RequestFailure::SessionClosed { .. }));
        }
        other => panic!("unexpected {other:?}"),
    }
    match hub_event(&rx, |e| matches!(e, HubEvent::Closed { .. })).await {
        HubEvent::Closed {
            session,
            reason,
            unacked,
        } => {
            assert_eq!(session, old);
            assert_eq!(reason, "expired");
            assert_eq!(unacked.len(), 1, "the RESERVE never reached the client");
        }
        other => panic!("unexpected {other:?}"),
    }
    match client_event(&mut c, |e| !matches!(e, ClientEvent::Disconnected { .. })).await {
        ClientEvent::NewSession {
            session,
            previous,
            code,
            lost,
            ..
        } => {
            assert_eq!(previous, old);
            assert_ne!(session, old);
            assert_eq!(code, Some(404));
            let lost: Vec<u64> = lost.iter().map(|f| n_of(&f.payload)).collect();
            assert_eq!(lost, [1, 2, 3]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(hub.session(&old).is_none());
}

/// The retransmission window is bounded on both sides: full → sends refused with WindowFull;
/// acks reopen it.
#[tokio::test]
async fn retransmission_window_full_refuses_sends_until_acked() {
    let mut cfg = server_config();
    cfg.session.window = 8;
    let server = ChannelServer::bind(cfg).await.expect("server");
    let hub = server.hub();
    let mut ccfg = client_config(server.local_addr());
    ccfg.session.window = 4;
    ccfg.subscribe = vec!["call".into()];
    let mut c = ChannelClient::connect(ccfg).await.expect("connect");
    let to = Target::Session(c.session_id().clone());
    // Client side: 4 queued, the 5th refused (nothing flushed yet, nothing acked).
    for n in 1..=4 {
        c.message(Body::new("billing", "USAGE", json!({ "n": n })))
            .expect("room");
    }
    assert!(matches!(
        c.message(Body::new("billing", "USAGE", json!({"n": 5}))),
        Err(ClientError::Send(SendError::WindowFull { capacity: 4 }))
    ));
    // Server side: the client does not read, so nothing is acked: 8 fit, then WindowFull.
    for n in 1..=8 {
        hub.message(&to, Body::new("call", "NOTIFY", json!({ "n": n })))
            .expect("room");
    }
    assert!(matches!(
        hub.message(&to, Body::new("call", "NOTIFY", json!({"n": 9}))),
        Err(HubError::Session {
            source: SendError::WindowFull { capacity: 8 },
            ..
        })
    ));
    let published = hub.publish(Body::new("call", "NOTIFY", json!({"n": 9})));
    assert_eq!((published.sent, published.window_full), (0, 1));
    // The client reads: 8 messages, acks; both windows reopen.
    let mut got = Vec::new();
    while got.len() < 8 {
        if let ClientEvent::Message(f) = client_event(&mut c, |_| true).await {
            got.push(n_of(&f.payload));
        }
    }
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
    let deadline = Instant::now() + WAIT;
    let mut reopened = false;
    while !reopened || c.session().unacked() > 0 {
        pump(&mut c, Duration::from_millis(5)).await;
        reopened = reopened
            || hub
                .message(&to, Body::new("call", "NOTIFY", json!({"n": 9})))
                .is_ok();
        assert!(
            Instant::now() < deadline,
            "windows never reopened (client unacked {})",
            c.session().unacked()
        );
    }
    assert!(
        c.message(Body::new("billing", "USAGE", json!({"n": 5})))
            .is_ok()
    );
}

/// Malformed frames get precise errors; the connection and the session survive.
#[tokio::test]
async fn malformed_frames_get_errors_and_the_session_survives() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let rx = server.events();
    let addr = server.local_addr();
    let mut ws = raw_connect(addr).await;
    // Before CONNECT: errors without seq.
    raw_send(
        &mut ws,
        r#"{"type":"message","seq":1,"package":"call","action":"X"}"#,
    )
    .await;
    let e = raw_frame(&mut ws).await;
    assert_eq!(
        (e.kind, e.code, e.seq),
        (FrameType::Error, Some(code::CONNECT_REQUIRED), None)
    );
    raw_send(&mut ws, "{oops").await;
    let e = raw_frame(&mut ws).await;
    assert_eq!(e.code, Some(code::BAD_FRAME));
    assert!(e.reason.unwrap_or_default().starts_with("not valid JSON"));
    raw_send(
        &mut ws,
        r#"{"type":"request","package":"session","action":"CONNECT"}"#,
    )
    .await;
    let resp = raw_frame(&mut ws).await;
    let sid = resp.session.clone().expect("session");

    let cases: [(&str, u16, Option<u64>, &str); 8] = [
        ("not json", 400, None, "not valid JSON"),
        (
            "[1,2]",
            400,
            None,
            "a frame must be a JSON object, got an array",
        ),
        (
            r#"{"type":"message","seq":"x","package":"p","action":"A"}"#,
            400,
            None,
            "field `seq`: expected an integer from 1 to 2^53-1, got string \"x\"",
        ),
        (
            r#"{"type":"bogus","seq":1}"#,
            400,
            Some(1),
            "field `type`: unknown frame type \"bogus\"",
        ),
        (
            r#"{"type":"message","package":"call","action":"X"}"#,
            400,
            None,
            "field `seq` is missing; message frames are sequenced",
        ),
        (
            r#"{"type":"message","seq":9,"package":"call","action":"X"}"#,
            409,
            None,
            "field `seq`: 9 received, 2 expected",
        ),
        (
            r#"{"type":"response","seq":2,"correlation":77,"package":"billing","action":"GRANT"}"#,
            400,
            Some(2),
            "field `correlation`: no request with seq 77 awaits a response",
        ),
        (
            r#"{"type":"request","seq":3,"package":"session","action":"FLY"}"#,
            501,
            Some(3),
            "package \"session\" has no request \"FLY\"",
        ),
    ];
    let mut last_error_seq = 0;
    for (text, code, correlation, reason) in cases {
        raw_send(&mut ws, text).await;
        let e = raw_data_frame(&mut ws).await;
        assert_eq!(e.kind, FrameType::Error, "{text}");
        assert_eq!(e.code, Some(code), "{text}");
        assert_eq!(e.correlation, correlation, "{text}");
        let got = e.reason.clone().unwrap_or_default();
        assert!(got.starts_with(reason), "{text}: {got}");
        // Errors are sequenced in the session.
        let seq = e.seq.expect("sequenced error");
        assert_eq!(seq, last_error_seq + 1);
        last_error_seq = seq;
        assert_eq!(e.session.as_ref(), Some(&sid));
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.expect("send");
    let e = raw_data_frame(&mut ws).await;
    assert!(
        e.reason
            .unwrap_or_default()
            .starts_with("binary WebSocket messages are not supported")
    );
    // The session survived: the next seq (bad frames 1..=3 consumed theirs) is delivered.
    raw_send(
        &mut ws,
        r#"{"type":"message","seq":4,"ack":9,"package":"billing","action":"USAGE","payload":{"n":4}}"#,
    )
    .await;
    let ev = hub_event(&rx, |e| matches!(e, HubEvent::Message(_))).await;
    let HubEvent::Message(m) = ev else {
        unreachable!()
    };
    assert_eq!(
        (m.session, m.seq, m.body.action.as_str()),
        (sid.clone(), 4, "USAGE")
    );
    assert!(
        rx.try_iter()
            .all(|e| !matches!(e, HubEvent::Disconnected { .. })),
        "the connection survived"
    );
    assert!(server.hub().session(&sid).expect("alive").attached);
}

/// Only `rtpedge.v1` is spoken: other subprotocols are refused with a reason.
#[tokio::test]
async fn wrong_subprotocol_is_refused_with_a_reason() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let mut cfg = client_config(server.local_addr());
    cfg.subprotocol = Some("chat.v2".into());
    match ChannelClient::connect(cfg.clone()).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, 400);
            assert!(
                body.contains("\"chat.v2\"") || body.contains("chat.v2"),
                "{body}"
            );
            assert!(body.contains("rtpedge.v1"), "{body}");
        }
        other => panic!("unexpected {other:?}"),
    }
    cfg.subprotocol = None;
    match ChannelClient::connect(cfg).await {
        Err(ClientError::Closed { code, reason }) => {
            assert_eq!(code, 1002);
            assert_eq!(reason, "subprotocol rtpedge.v1 required (none offered)");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(server.hub().sessions().is_empty());
}

/// A peer that stops answering pings is dropped after 3 intervals; its session stays
/// resumable. A live client (whose reads answer the pings) is not dropped.
#[tokio::test]
async fn keepalive_drops_a_silent_peer_and_keeps_its_session() {
    let mut cfg = server_config();
    cfg.keepalive = Duration::from_millis(100);
    let server = ChannelServer::bind(cfg).await.expect("server");
    let (hub, rx) = (server.hub(), server.events());
    let addr = server.local_addr();
    let mut live = ChannelClient::connect(client_config(addr))
        .await
        .expect("connect");
    let live_id = live.session_id().clone();
    let (silent, resp) = raw_open(
        addr,
        r#"{"type":"request","package":"session","action":"CONNECT"}"#,
    )
    .await;
    let silent_id = resp.session.clone().expect("session");
    // The raw peer now reads nothing (so its pongs never go out); the live one keeps reading.
    // Not dropped before 3 intervals...
    let pumped = pump(&mut live, Duration::from_millis(250)).await;
    assert!(pumped.is_empty(), "{pumped:?}");
    assert!(
        rx.try_iter()
            .all(|e| !matches!(e, HubEvent::Disconnected { .. })),
        "dropped too early"
    );
    // ... but soon after.
    let pumped = pump(&mut live, Duration::from_millis(350)).await;
    assert!(pumped.is_empty(), "{pumped:?}");
    let mut dropped = None;
    for ev in rx.try_iter() {
        if let HubEvent::Disconnected { session, reason } = ev {
            assert_eq!(session, silent_id, "only the silent peer is dropped");
            assert!(reason.starts_with("keepalive: peer silent for"), "{reason}");
            dropped = Some(reason);
        }
    }
    assert!(
        dropped.is_some(),
        "the silent peer was dropped within 600 ms"
    );
    assert!(hub.session(&live_id).expect("live").attached);
    let info = hub.session(&silent_id).expect("kept for resume");
    assert!(!info.attached);
    drop(silent);
    // It comes back and resumes.
    let (_ws, resp) = raw_open(
        addr,
        &format!(
            r#"{{"type":"request","package":"session","action":"CONNECT","session":"{silent_id}","ack":0,"payload":{{"window":{{"first":1,"next":1}}}}}}"#
        ),
    )
    .await;
    assert_eq!(resp.payload["resumed"], true, "{resp:?}");
    assert_eq!(resp.session, Some(silent_id));
}

/// Published messages reach subscribed sessions only; SUBSCRIBE / UNSUBSCRIBE change that.
#[tokio::test]
async fn events_are_published_to_subscribers_only() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let hub = server.hub();
    let addr = server.local_addr();
    let mut a_cfg = client_config(addr);
    a_cfg.subscribe = vec!["call".into()];
    let mut a = ChannelClient::connect(a_cfg).await.expect("a");
    let mut b = ChannelClient::connect(client_config(addr))
        .await
        .expect("b");
    let sub = b.subscribe(&["events"]).expect("subscribe");
    match client_event(&mut b, |_| true).await {
        ClientEvent::Response(f) => {
            assert_eq!(f.correlation, Some(sub));
            assert_eq!(f.payload["packages"], json!(["events"]));
        }
        other => panic!("unexpected {other:?}"),
    }
    let p = hub.publish(Body::new("call", "NOTIFY", json!({"n": 1})));
    assert_eq!((p.sent, p.window_full), (1, 0));
    let p = hub.publish(Body::new("events", "NOTIFY", json!({"n": 2})));
    assert_eq!((p.sent, p.window_full), (1, 0));
    let p = hub.publish(Body::new("billing", "NOTIFY", json!({"n": 3})));
    assert_eq!(p.sent, 0, "nobody subscribed to billing");
    // A marker sent directly after the publishes: what arrives before it is all there is.
    for c in [&a, &b] {
        hub.message(
            &Target::Session(c.session_id().clone()),
            Body::new("session-test", "MARK", json!({"n": 99})),
        )
        .expect("marker");
    }
    for (c, expected) in [(&mut a, ("call", 1)), (&mut b, ("events", 2))] {
        let mut seen = Vec::new();
        loop {
            if let ClientEvent::Message(f) = client_event(c, |_| true).await {
                let pkg = f.package.clone().unwrap_or_default();
                seen.push((pkg, n_of(&f.payload)));
                if n_of(&f.payload) == 99 {
                    break;
                }
            }
        }
        assert_eq!(
            seen,
            [
                (expected.0.to_owned(), expected.1),
                ("session-test".to_owned(), 99)
            ]
        );
    }
    // Unsubscribe: no more events for b.
    b.request(Body::new(
        package::SESSION,
        action::UNSUBSCRIBE,
        json!({"packages": ["events"]}),
    ))
    .expect("unsubscribe");
    match client_event(&mut b, |_| true).await {
        ClientEvent::Response(f) => assert_eq!(f.payload["packages"], json!([])),
        other => panic!("unexpected {other:?}"),
    }
    let p = hub.publish(Body::new("events", "NOTIFY", json!({"n": 4})));
    assert_eq!(p.sent, 0);
}

/// "The billing system" is the most recently connected session with role `billing`, preferring
/// attached ones; `billing_connected` follows connections.
#[tokio::test]
async fn billing_target_follows_the_most_recent_billing_session() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let (hub, rx) = (server.hub(), server.events());
    let mut cfg = client_config(server.local_addr());
    cfg.role = Some("billing".into());
    cfg.auto_reconnect = false;
    let first = ChannelClient::connect(cfg.clone()).await.expect("first");
    let mut second = ChannelClient::connect(cfg).await.expect("second");
    let _dash = ChannelClient::connect(client_config(server.local_addr()))
        .await
        .expect("dashboard");
    assert_eq!(hub.billing_session().as_ref(), Some(second.session_id()));
    second.abort_connection();
    hub_event(&rx, |e| matches!(e, HubEvent::Disconnected { .. })).await;
    assert_eq!(
        hub.billing_session().as_ref(),
        Some(first.session_id()),
        "an attached billing session is preferred"
    );
    assert!(hub.billing_connected());
    drop(first);
    hub_event(&rx, |e| matches!(e, HubEvent::Disconnected { .. })).await;
    assert!(!hub.billing_connected(), "both billing sessions detached");
    // Requests still go to the most recent one, to be delivered on its resume.
    assert_eq!(hub.billing_session().as_ref(), Some(second.session_id()));
}

/// The synchronous API the daemon uses: a server on its own thread, the hub from a plain
/// thread; on shutdown, clients get SHUTDOWN.
#[test]
fn server_on_its_own_thread_and_shutdown() {
    let server = ChannelServer::start(server_config()).expect("start");
    let (hub, rx, addr) = (server.hub(), server.events(), server.local_addr());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = client_config(addr);
    cfg.role = Some("billing".into());
    let mut c = rt.block_on(ChannelClient::connect(cfg)).expect("connect");
    assert!(matches!(
        rx.recv_timeout(WAIT),
        Ok(HubEvent::Connected { .. })
    ));
    // From a non-async thread.
    let h = hub.clone();
    std::thread::spawn(move || {
        h.request(
            &Target::Billing,
            Body::new("billing", "RESERVE", json!({"n": 1})),
        )
    })
    .join()
    .expect("thread")
    .expect("request");
    rt.block_on(async {
        match client_event(&mut c, |_| true).await {
            ClientEvent::Request(f) => {
                c.respond(f.seq.unwrap_or(0), Body::new("billing", "GRANT", json!({})))
                    .expect("respond");
            }
            other => panic!("unexpected {other:?}"),
        }
        c.flush().await.expect("flush");
    });
    assert!(matches!(
        rx.recv_timeout(WAIT),
        Ok(HubEvent::Response { .. })
    ));
    let (tx_done, rx_done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx_done.send(());
    });
    rt.block_on(async {
        match client_event(&mut c, |e| !matches!(e, ClientEvent::Disconnected { .. })).await {
            ClientEvent::Shutdown { reason } => {
                assert_eq!(reason.as_deref(), Some("server shutting down"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(c.next_event().await, Err(ClientError::ShutDown)));
    });
    rx_done.recv_timeout(WAIT).expect("shutdown returns");
}

/// A session ends for good by the peer's SHUTDOWN or by the application (`close_session`);
/// neither can be resumed.
#[tokio::test]
async fn sessions_end_by_shutdown_or_by_the_application() {
    let server = ChannelServer::bind(server_config()).await.expect("server");
    let (hub, rx) = (server.hub(), server.events());
    let addr = server.local_addr();
    let mut a = ChannelClient::connect(client_config(addr))
        .await
        .expect("a");
    let a_id = a.session_id().clone();
    a.close().await.expect("close");
    match hub_event(&rx, |e| matches!(e, HubEvent::Closed { .. })).await {
        HubEvent::Closed {
            session, reason, ..
        } => {
            assert_eq!(session, a_id);
            assert_eq!(reason, "shut down by the peer");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(hub.session(&a_id).is_none());
    assert!(matches!(a.next_event().await, Err(ClientError::ShutDown)));

    let mut b = ChannelClient::connect(client_config(addr))
        .await
        .expect("b");
    let b_id = b.session_id().clone();
    hub.close_session(&b_id, "operator").expect("close");
    match client_event(&mut b, |_| true).await {
        ClientEvent::Disconnected { reason } => {
            assert_eq!(reason, "closed by the server: 4001 session closed");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(b.next_event().await, Err(ClientError::ShutDown)));
    assert_eq!(
        hub.close_session(&b_id, "again"),
        Err(HubError::UnknownSession(b_id))
    );
}
