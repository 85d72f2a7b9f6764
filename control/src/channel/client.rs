//! An async client of the channel: the same [`Session`] logic as the server, plus connect,
//! reconnect and resume. Used by the tests, and an example for integrators (a billing
//! simulator is a loop around [`ChannelClient::next_event`]).
//!
//! # What this module owns
//! One client connection at a time: the WebSocket (subprotocol `rtpedge.v1`), the CONNECT
//! handshake (fresh or resuming), keepalive pings, automatic reconnection with resume, and the
//! client's requests awaiting responses.
//!
//! # What it must not touch
//! Server state, and the meaning of billing actions: the application decides what to do with
//! the [`ClientEvent`]s it gets.
//!
//! # Use
//! Sends ([`ChannelClient::request`], [`ChannelClient::message`], ...) are synchronous: they
//! queue the frame in the session (refused with [`SendError::WindowFull`] when the window is
//! full) and it goes out on the next [`ChannelClient::next_event`] or
//! [`ChannelClient::flush`]. `next_event` drives all I/O (reads, writes, acks, pings,
//! reconnects) and is cancel-safe, so it can sit in a `select!` with the application's timers.

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::{
    net::TcpStream,
    time::{Interval, MissedTickBehavior, sleep, sleep_until, timeout},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{
        Error as WsError, Message,
        client::IntoClientRequest,
        http::HeaderValue,
        protocol::{WebSocketConfig, frame::coding::CloseCode},
    },
};

use super::{
    frame::{Body, Frame, FrameType, SUBPROTOCOL, SessionId, action, code, package},
    handshake::{ConnectRequest, ConnectResponse, ResumeRequest},
    io::Outbox,
    server::close_code,
    session::{Inbound, SendError, Session, SessionConfig},
};

/// Client parameters.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server, e.g. `ws://127.0.0.1:8081/`.
    pub url: String,
    /// The subprotocol offered: `rtpedge.v1` (None offers none; for tests).
    pub subprotocol: Option<String>,
    /// The role declared in CONNECT, e.g. `billing`.
    pub role: Option<String>,
    /// Packages subscribed to in every CONNECT.
    pub subscribe: Vec<String>,
    /// Reliability parameters of the client's side.
    pub session: SessionConfig,
    /// Ping interval.
    pub keepalive: Duration,
    /// A server silent for this many intervals is considered gone.
    pub keepalive_misses: u32,
    /// Time allowed for TCP, the WebSocket upgrade and the CONNECT.
    pub connect_timeout: Duration,
    /// Reconnect (and resume) when the connection is lost.
    pub auto_reconnect: bool,
    /// Reconnection attempts before [`ChannelClient::next_event`] gives up.
    pub reconnect_attempts: u32,
    /// Delay before reconnection attempt n is n × this.
    pub reconnect_backoff: Duration,
    /// Largest message accepted, in bytes.
    pub max_frame_bytes: usize,
}

impl ClientConfig {
    /// Defaults for a server URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            subprotocol: Some(SUBPROTOCOL.into()),
            role: None,
            subscribe: Vec::new(),
            session: SessionConfig::default(),
            keepalive: Duration::from_secs(15),
            keepalive_misses: 3,
            connect_timeout: Duration::from_secs(10),
            auto_reconnect: true,
            reconnect_attempts: 10,
            reconnect_backoff: Duration::from_millis(100),
            max_frame_bytes: 1 << 20,
        }
    }
}

/// A client failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// WebSocket or TCP failure.
    #[error("WebSocket: {0}")]
    WebSocket(Box<WsError>),
    /// The server refused the WebSocket upgrade.
    #[error("the server refused the connection: HTTP {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's explanation.
        body: String,
    },
    /// The server closed the connection.
    #[error("connection closed by the server: {code} {reason}")]
    Closed {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// The CONNECT exchange failed.
    #[error("CONNECT failed: {0}")]
    Handshake(String),
    /// Connecting took too long.
    #[error("connecting to the channel timed out")]
    Timeout,
    /// The session refused a send.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The session was shut down (by either side) or taken over by another connection.
    #[error("the session is shut down")]
    ShutDown,
    /// Not connected and automatic reconnection is off.
    #[error("not connected")]
    NotConnected,
    /// Every reconnection attempt failed.
    #[error("reconnection failed after {attempts} attempts: {last}")]
    ReconnectFailed {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

impl From<WsError> for ClientError {
    fn from(e: WsError) -> Self {
        match e {
            WsError::Http(resp) => ClientError::Refused {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default(),
            },
            other => ClientError::WebSocket(Box::new(other)),
        }
    }
}

/// What the client reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// A request from the server (answer with [`ChannelClient::respond`]).
    Request(Frame),
    /// A message from the server.
    Message(Frame),
    /// The response to one of the client's requests (`correlation` is the request's seq).
    Response(Frame),
    /// An error frame from the server.
    Error(Frame),
    /// The connection was lost; with automatic reconnection, a resume follows.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Reconnected and resumed: nothing lost, nothing duplicated.
    Resumed {
        /// The session.
        session: SessionId,
        /// Frames of the client's window retransmitted.
        retransmit: u64,
    },
    /// Reconnected, but the server could not resume: a new session.
    NewSession {
        /// The new session.
        session: SessionId,
        /// The one that could not be resumed.
        previous: SessionId,
        /// Why (code).
        code: Option<u16>,
        /// Why (words).
        reason: Option<String>,
        /// The client's frames the server never acknowledged (send them again if they matter).
        lost: Vec<Frame>,
        /// Seqs of the client's requests whose responses will never come.
        failed_requests: Vec<u64>,
    },
    /// The server ended the session (SHUTDOWN).
    Shutdown {
        /// Its reason, if given.
        reason: Option<String>,
    },
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Conn {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    stream: futures_util::stream::SplitStream<Ws>,
    last_rx: Instant,
    ping: Interval,
}

/// The outcome of one connection attempt.
type Opened = Result<(Conn, ConnectResponse), ClientError>;

/// A reconnection attempt in progress (kept across cancellations of `next_event`).
struct Attempt {
    number: u32,
    future: Pin<Box<dyn Future<Output = Opened> + Send>>,
}

enum Step {
    Wrote(Result<(), WsError>),
    Read(Option<Result<Message, WsError>>),
    Timer,
    Ping,
}

/// The client.
pub struct ChannelClient {
    cfg: ClientConfig,
    conn: Option<Conn>,
    session: Session,
    outbox: Outbox,
    pending: HashSet<u64>,
    events: VecDeque<ClientEvent>,
    shut_down: bool,
    server: ConnectResponse,
    connecting: Option<Attempt>,
}

impl std::fmt::Debug for ChannelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelClient")
            .field("url", &self.cfg.url)
            .field("session", self.session.id())
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl ChannelClient {
    /// Connects and opens a new session.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        let req = ConnectRequest {
            resume: None,
            role: cfg.role.clone(),
            subscribe: cfg.subscribe.clone(),
        };
        let (conn, resp) = open(&cfg, &req).await?;
        let session = Session::new(resp.session.clone(), cfg.session.clone());
        Ok(Self {
            cfg,
            conn: Some(conn),
            session,
            outbox: Outbox::new(Instant::now()),
            pending: HashSet::new(),
            events: VecDeque::new(),
            shut_down: false,
            server: resp,
            connecting: None,
        })
    }

    /// The session (id, counters, window).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session id.
    pub fn session_id(&self) -> &SessionId {
        self.session.id()
    }

    /// What the server said in the last CONNECT response (window, keepalive, expiry).
    pub fn server_info(&self) -> &ConnectResponse {
        &self.server
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Requests awaiting a response.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    fn queue(&mut self, frame: Frame) -> Result<u64, ClientError> {
        if self.shut_down {
            return Err(ClientError::ShutDown);
        }
        Ok(self.session.send(frame)?)
    }

    /// Queues a request; its response arrives as [`ClientEvent::Response`] with `correlation`
    /// equal to the returned seq.
    pub fn request(&mut self, body: Body) -> Result<u64, ClientError> {
        let seq = self.queue(Frame::with_body(FrameType::Request, body))?;
        self.pending.insert(seq);
        Ok(seq)
    }

    /// Queues a message.
    pub fn message(&mut self, body: Body) -> Result<u64, ClientError> {
        self.queue(Frame::with_body(FrameType::Message, body))
    }

    /// Queues the response to the server's request `correlation`.
    pub fn respond(&mut self, correlation: u64, body: Body) -> Result<u64, ClientError> {
        let mut frame = Frame::with_body(FrameType::Response, body);
        frame.correlation = Some(correlation);
        self.queue(frame)
    }

    /// Queues an error answering the server's frame `correlation`.
    pub fn respond_error(
        &mut self,
        correlation: u64,
        code: u16,
        reason: &str,
    ) -> Result<u64, ClientError> {
        let mut frame = Frame::error(code, reason);
        frame.correlation = Some(correlation);
        self.queue(frame)
    }

    /// Queues a SUBSCRIBE request for `packages`.
    pub fn subscribe(&mut self, packages: &[&str]) -> Result<u64, ClientError> {
        self.request(Body::new(
            package::SESSION,
            action::SUBSCRIBE,
            serde_json::json!({ "packages": packages }),
        ))
    }

    /// Writes a text message as is, bypassing the session (for tests and diagnostics: e.g. a
    /// malformed frame). Goes out on the next flush.
    pub fn send_raw(&mut self, text: impl Into<String>) {
        self.outbox.push_text(Instant::now(), text.into());
    }

    /// Drops the connection without a close handshake (as a network failure would). With
    /// automatic reconnection, the next [`ChannelClient::next_event`] reconnects and resumes.
    pub fn abort_connection(&mut self) {
        self.lost("connection aborted by the client".into());
    }

    /// Writes everything queued on the current connection.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        while let Some(t) = self.session.poll_transmit(now) {
            self.outbox.push_text(now, t);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(ClientError::NotConnected);
        };
        if let Err(e) = self.outbox.drive(&mut conn.sink).await {
            self.lost(format!("write failed: {e}"));
            return Err(e.into());
        }
        Ok(())
    }

    /// Ends the session for good: a SHUTDOWN message, then the server closes the connection.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.queue(Frame::with_body(
            FrameType::Message,
            Body::new(package::SESSION, action::SHUTDOWN, serde_json::Value::Null),
        ))?;
        self.flush().await?;
        self.shut_down = true;
        if let Some(conn) = self.conn.as_mut() {
            // Wait briefly for the server's close frame.
            let _ = timeout(Duration::from_secs(1), async {
                while let Some(Ok(m)) = conn.stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        self.conn = None;
        Ok(())
    }

    /// The next event, driving all I/O meanwhile (and reconnecting when allowed). Cancel-safe.
    pub async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            if let Some(ev) = self.events.pop_front() {
                return Ok(ev);
            }
            if self.shut_down {
                return Err(ClientError::ShutDown);
            }
            if self.conn.is_none() {
                if !self.cfg.auto_reconnect {
                    return Err(ClientError::NotConnected);
                }
                self.reconnect_with_retries().await?;
                continue;
            }
            self.step().await;
        }
    }

    /// Reconnects (with retries and backoff) and resumes. The attempt in progress lives in
    /// `self`, so dropping this future (a `select!`, a timeout) loses nothing: the next call
    /// continues the same attempt.
    async fn reconnect_with_retries(&mut self) -> Result<(), ClientError> {
        let max = self.cfg.reconnect_attempts.max(1);
        loop {
            if self.connecting.is_none() {
                self.start_attempt(1, Duration::ZERO);
            }
            let Some(attempt) = self.connecting.as_mut() else {
                continue;
            };
            let result = (&mut attempt.future).await;
            let n = attempt.number;
            self.connecting = None;
            match result {
                Ok((conn, resp)) => return self.install(conn, resp),
                Err(e @ (ClientError::Refused { .. } | ClientError::Handshake(_))) => {
                    return Err(e);
                }
                Err(e) if n >= max => {
                    return Err(ClientError::ReconnectFailed {
                        attempts: n,
                        last: e.to_string(),
                    });
                }
                Err(e) => {
                    tracing::debug!(attempt = n, error = %e, "channel client: reconnect failed");
                    self.start_attempt(n + 1, self.cfg.reconnect_backoff * n);
                }
            }
        }
    }

    /// Starts reconnection attempt `number` after `delay`, asking to resume the session as it
    /// stands now. (Frames queued while the attempt runs only make the window's `next` larger
    /// than announced; the server cannot have received them, so the resume stays consistent.)
    fn start_attempt(&mut self, number: u32, delay: Duration) {
        let req = ConnectRequest {
            resume: Some(ResumeRequest {
                session: self.session.id().clone(),
                received: self.session.received(),
                window: self.session.window_bounds(),
            }),
            role: self.cfg.role.clone(),
            subscribe: self.cfg.subscribe.clone(),
        };
        let cfg = self.cfg.clone();
        self.connecting = Some(Attempt {
            number,
            future: Box::pin(async move {
                if !delay.is_zero() {
                    sleep(delay).await;
                }
                open(&cfg, &req).await
            }),
        });
    }

    /// Reconnects now (dropping the current connection, if any) and resumes the session, or
    /// gets a new one (reported as [`ClientEvent::NewSession`]). One attempt, no retries.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        if self.shut_down {
            return Err(ClientError::ShutDown);
        }
        self.lost("reconnecting".into());
        self.connecting = None;
        self.start_attempt(1, Duration::ZERO);
        let Some(attempt) = self.connecting.as_mut() else {
            return Err(ClientError::NotConnected);
        };
        let result = (&mut attempt.future).await;
        self.connecting = None;
        let (conn, resp) = result?;
        self.install(conn, resp)
    }

    /// A new connection is up: resume, or adopt the new session.
    fn install(&mut self, conn: Conn, resp: ConnectResponse) -> Result<(), ClientError> {
        // Whatever was queued for the old connection is void: the session retransmits.
        self.outbox = Outbox::new(Instant::now());
        if resp.resumed {
            let resumed = self.session.resumed(resp.received).map_err(|e| {
                ClientError::Handshake(format!("server resumed inconsistently: {e}"))
            })?;
            self.events.push_back(ClientEvent::Resumed {
                session: resp.session.clone(),
                retransmit: resumed.retransmit,
            });
        } else {
            let fresh = Session::new(resp.session.clone(), self.cfg.session.clone());
            let old = std::mem::replace(&mut self.session, fresh);
            let previous = old.id().clone();
            let mut failed_requests: Vec<u64> = self.pending.drain().collect();
            failed_requests.sort_unstable();
            self.events.push_back(ClientEvent::NewSession {
                session: resp.session.clone(),
                previous,
                code: resp.code,
                reason: resp.reason.clone(),
                lost: old.into_unacked(),
                failed_requests,
            });
        }
        self.server = resp;
        self.conn = Some(conn);
        Ok(())
    }

    fn lost(&mut self, reason: String) {
        if self.conn.take().is_some() {
            self.session.detach(Instant::now());
            self.outbox = Outbox::new(Instant::now());
            self.events.push_back(ClientEvent::Disconnected { reason });
        }
    }

    /// One round of I/O.
    async fn step(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.session.poll_transmit(now) {
            self.outbox.push_text(now, t);
        }
        let ack_at = self.session.poll_timeout();
        let dead_after = self.cfg.keepalive * self.cfg.keepalive_misses.max(1);
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let outbox = &mut self.outbox;
        let ack_timer = async {
            match ack_at {
                Some(t) => sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let step = tokio::select! {
            r = outbox.drive(&mut conn.sink), if !outbox.is_idle() => Step::Wrote(r),
            m = conn.stream.next() => Step::Read(m),
            _ = ack_timer => Step::Timer,
            _ = conn.ping.tick() => Step::Ping,
        };
        let now = Instant::now();
        match step {
            Step::Wrote(Ok(())) | Step::Timer => {}
            Step::Wrote(Err(e)) => self.lost(format!("write failed: {e}")),
            Step::Ping => {
                let silent = self
                    .conn
                    .as_ref()
                    .map(|c| c.last_rx.elapsed())
                    .unwrap_or_default();
                if silent >= dead_after {
                    self.lost(format!(
                        "keepalive: server silent for {} ms",
                        silent.as_millis()
                    ));
                } else if self.outbox.stalled_for(now) >= dead_after {
                    self.lost("server is not reading".into());
                } else {
                    self.outbox.push(now, Message::Ping(Default::default()));
                }
            }
            Step::Read(m) => {
                if let Some(c) = self.conn.as_mut() {
                    c.last_rx = now;
                }
                match m {
                    Some(Ok(Message::Text(text))) => self.on_text(now, &text),
                    Some(Ok(Message::Binary(_))) => {
                        if let Some(t) = self.session.send_error(
                            code::BAD_FRAME,
                            "binary WebSocket messages are not supported; frames are JSON text",
                            None,
                        ) {
                            self.outbox.push_best_effort(now, t);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                            .unwrap_or((u16::from(CloseCode::Status), String::new()));
                        if code == close_code::REPLACED || code == close_code::SESSION_CLOSED {
                            self.shut_down = true;
                        }
                        self.lost(format!("closed by the server: {code} {reason}"));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => self.lost(format!("read failed: {e}")),
                    None => self.lost("connection closed".into()),
                }
            }
        }
    }

    fn on_text(&mut self, now: Instant, text: &str) {
        let inbound = match Frame::parse(text) {
            Ok(frame) => self.session.handle(now, frame),
            Err(m) => self.session.handle_malformed(now, m),
        };
        let error = match inbound {
            Inbound::Deliver(frame) => {
                self.deliver(frame);
                None
            }
            Inbound::Ack | Inbound::Duplicate { .. } => None,
            Inbound::Gap { expected, got } => Some((
                code::SEQUENCE_GAP,
                format!("field `seq`: {got} received, {expected} expected"),
                None,
            )),
            Inbound::Rejected { error, consumed } => {
                Some((code::BAD_FRAME, error.to_string(), consumed))
            }
        };
        if let Some((c, reason, corr)) = error
            && let Some(t) = self.session.send_error(c, reason, corr)
        {
            self.outbox.push_best_effort(now, t);
        }
    }

    fn deliver(&mut self, frame: Frame) {
        let event = match frame.kind {
            FrameType::Request => ClientEvent::Request(frame),
            FrameType::Message if frame.is(package::SESSION, action::SHUTDOWN) => {
                self.shut_down = true;
                ClientEvent::Shutdown {
                    reason: frame
                        .payload
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .map(str::to_owned),
                }
            }
            FrameType::Message => ClientEvent::Message(frame),
            FrameType::Response => {
                if let Some(c) = frame.correlation {
                    self.pending.remove(&c);
                }
                ClientEvent::Response(frame)
            }
            FrameType::Error => {
                if let Some(c) = frame.correlation {
                    self.pending.remove(&c);
                }
                ClientEvent::Error(frame)
            }
            FrameType::Ack => return,
        };
        self.events.push_back(event);
    }
}

/// TCP, WebSocket upgrade, CONNECT and its response.
async fn open(
    cfg: &ClientConfig,
    req: &ConnectRequest,
) -> Result<(Conn, ConnectResponse), ClientError> {
    match timeout(cfg.connect_timeout, open_inner(cfg, req)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout),
    }
}

async fn open_inner(
    cfg: &ClientConfig,
    req: &ConnectRequest,
) -> Result<(Conn, ConnectResponse), ClientError> {
    let mut request = cfg.url.as_str().into_client_request()?;
    if let Some(proto) = &cfg.subprotocol {
        let value = HeaderValue::from_str(proto)
            .map_err(|e| ClientError::Handshake(format!("subprotocol {proto:?}: {e}")))?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
    }
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(cfg.max_frame_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes));
    let (ws, _) = connect_async_with_config(request, Some(ws_cfg), true).await?;
    let (mut sink, mut stream) = ws.split();
    let mut outbox = Outbox::new(Instant::now());
    outbox.push_text(Instant::now(), req.to_frame().encode());
    outbox.drive(&mut sink).await?;
    let resp = loop {
        match stream.next().await {
            None => {
                return Err(ClientError::Handshake(
                    "connection closed before the CONNECT response".into(),
                ));
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => {
                let frame = Frame::parse(&text)
                    .map_err(|m| ClientError::Handshake(format!("bad CONNECT response: {m}")))?;
                if frame.kind == FrameType::Error {
                    return Err(ClientError::Handshake(format!(
                        "{} {}",
                        frame.code.unwrap_or(0),
                        frame.reason.unwrap_or_default()
                    )));
                }
                break ConnectResponse::from_frame(&frame)
                    .map_err(|e| ClientError::Handshake(format!("bad CONNECT response: {e}")))?;
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                    .unwrap_or((u16::from(CloseCode::Status), String::new()));
                return Err(ClientError::Closed { code, reason });
            }
            Some(Ok(_)) => {}
        }
    };
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.keepalive, cfg.keepalive);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Ok((
        Conn {
            sink,
            stream,
            last_rx: Instant::now(),
            ping,
        },
        resp,
    ))
}
