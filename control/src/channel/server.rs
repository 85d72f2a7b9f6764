//! The channel's WebSocket server and the application's handle on it, [`ChannelHub`].
//!
//! # What this module owns
//! The listening socket, one task per connection (subprotocol check, the CONNECT handshake,
//! then a loop that feeds received frames to the connection's [`Session`] and writes what the
//! session has to transmit), WebSocket ping/pong keepalive, the registry of sessions (attached
//! or detached, their roles, subscriptions and requests awaiting responses), expiry of detached
//! sessions, the `session` package (CONNECT, SUBSCRIBE, UNSUBSCRIBE, SHUTDOWN), and the
//! synchronous [`ChannelHub`] through which the (non-async) daemon publishes, sends requests
//! and reads what external systems send ([`HubEvent`]s on a crossbeam channel).
//!
//! # What it must not touch
//! The engine, billing decisions and CDRs: it carries frames and reports events; what a RESERVE
//! or an EXHAUSTED means is decided by the application reading [`HubEvent`]s.
//!
//! # Concurrency
//! All sessions live in one registry behind a `std::sync::Mutex`, held only for short,
//! non-blocking sections (never across an `.await`). Hub calls take the lock, queue frames into
//! the session and wake the connection's task ([`tokio::sync::Notify`]), which writes them.
//! Events for the application are sent under the same lock, so that the order of frames of a
//! session is the order of events even across a takeover by a new connection.
//!
//! The event channel is unbounded, but a connection stops reading from its socket while
//! [`ServerConfig::app_queue_limit`] events are waiting (so it stops acknowledging, and the
//! peer's window fills): the queue holds at most that limit plus one frame per connection.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
    task::JoinSet,
    time::{MissedTickBehavior, sleep, sleep_until, timeout, timeout_at},
};
use tokio_tungstenite::{
    accept_hdr_async_with_config,
    tungstenite::{
        Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::{HeaderValue, StatusCode},
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};

use super::{
    frame::{Body, Frame, FrameType, SUBPROTOCOL, SessionId, action, code, package},
    handshake::{ConnectRequest, ConnectResponse, packages},
    io::Outbox,
    session::{Inbound, ResumeRefused, SendError, Session, SessionConfig, SessionStats},
};

/// The role a billing system declares in its CONNECT payload (`{"role": "billing"}`).
pub const ROLE_BILLING: &str = "billing";

/// WebSocket close codes used by the server (4000–4999 are application codes).
pub mod close_code {
    /// The session was resumed on another connection.
    pub const REPLACED: u16 = 4000;
    /// The session was shut down (by the peer's SHUTDOWN, or closed by the application).
    pub const SESSION_CLOSED: u16 = 4001;
    /// No CONNECT within the handshake timeout.
    pub const NO_CONNECT: u16 = 4002;
    /// The subprotocol `rtpedge.v1` was not requested.
    pub const PROTOCOL: u16 = 1002;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

/// Server parameters.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Per-session reliability parameters (window, ack delay, expiry of detached sessions).
    pub session: SessionConfig,
    /// WebSocket ping interval.
    pub keepalive: Duration,
    /// A peer silent (no frame, no pong) for this many intervals is dropped; its session stays
    /// resumable until it expires.
    pub keepalive_misses: u32,
    /// Time allowed for the WebSocket upgrade and the CONNECT.
    pub handshake_timeout: Duration,
    /// Largest WebSocket message accepted, in bytes (a larger one ends the connection).
    pub max_frame_bytes: usize,
    /// Requests to one session awaiting a response, at most.
    pub max_pending_requests: usize,
    /// Connections stop reading while this many events wait for the application.
    pub app_queue_limit: usize,
    /// Simultaneous connections, at most.
    pub max_connections: usize,
    /// Sessions (attached or detached), at most; a CONNECT that would open one more is refused
    /// with code 503.
    pub max_sessions: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            session: SessionConfig::default(),
            keepalive: Duration::from_secs(15),
            keepalive_misses: 3,
            handshake_timeout: Duration::from_secs(10),
            max_frame_bytes: 1 << 20,
            max_pending_requests: 1024,
            app_queue_limit: 4096,
            max_connections: 256,
            max_sessions: 1024,
        }
    }
}

/// Starting the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("binding the channel endpoint {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The runtime or its thread could not be started.
    #[error("starting the channel thread: {0}")]
    Runtime(io::Error),
}

/// A request sent by the application, or received from a peer: the session and the request's
/// seq in its sender's direction. Responses are correlated by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestRef {
    /// The session.
    pub session: SessionId,
    /// The request's seq.
    pub seq: u64,
}

/// Where the application sends a request or message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// This session.
    Session(SessionId),
    /// The billing system: the most recently connected session with role `billing` that is
    /// attached, else the most recently connected detached one (the frame then waits for its
    /// resume, or fails when it expires).
    Billing,
}

/// A request or message received from a peer.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    /// The session it came on.
    pub session: SessionId,
    /// The role the session declared.
    pub role: Option<String>,
    /// Its seq.
    pub seq: u64,
    /// Package, action, code, reason and payload.
    pub body: Body,
}

impl Incoming {
    /// The reference to answer this request with ([`ChannelHub::respond`]).
    pub fn request_ref(&self) -> RequestRef {
        RequestRef {
            session: self.session.clone(),
            seq: self.seq,
        }
    }
}

/// Why a request sent by the application got no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestFailure {
    /// The peer answered with an `error` frame.
    Remote {
        /// Its code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// The session ended (expired, shut down, or replaced after a refused resume) before a
    /// response came.
    SessionClosed {
        /// Why.
        reason: String,
    },
}

/// What the channel reports to the application, in order per session.
#[derive(Clone, Debug, PartialEq)]
pub enum HubEvent {
    /// A connection now carries `session`.
    Connected {
        /// The session.
        session: SessionId,
        /// Its declared role.
        role: Option<String>,
        /// Whether an existing session was resumed.
        resumed: bool,
        /// The session whose resumption was refused (it is closed).
        previous: Option<SessionId>,
    },
    /// The connection carrying `session` is gone; the session is resumable until it expires.
    Disconnected {
        /// The session.
        session: SessionId,
        /// Why.
        reason: String,
    },
    /// The session ended for good.
    Closed {
        /// The session.
        session: SessionId,
        /// Why (expired, shut down by the peer, replaced, server shutdown).
        reason: String,
        /// Frames sent to the peer and never acknowledged.
        unacked: Vec<Frame>,
    },
    /// A request from a peer: answer with [`ChannelHub::respond`] or [`ChannelHub::respond_error`].
    Request(Incoming),
    /// A message from a peer.
    Message(Incoming),
    /// The response to a request the application sent.
    Response {
        /// The request answered.
        request: RequestRef,
        /// Package, action, code, reason and payload of the response.
        body: Body,
    },
    /// A request the application sent will get no response.
    RequestFailed {
        /// The request.
        request: RequestRef,
        /// Why.
        failure: RequestFailure,
    },
    /// A peer reported an error not tied to one of the application's requests.
    PeerError {
        /// The session.
        session: SessionId,
        /// Its code.
        code: u16,
        /// Its reason.
        reason: String,
        /// The seq it refers to, if any.
        correlation: Option<u64>,
    },
}

/// A send refused by the hub.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// No such session (or it has ended).
    #[error("no session {0}")]
    UnknownSession(SessionId),
    /// No session has declared role `billing`.
    #[error("no billing system is connected")]
    NoBillingSystem,
    /// The session's retransmission window is full.
    #[error("session {session}: {source}")]
    Session {
        /// The session.
        session: SessionId,
        /// The session's refusal.
        source: SendError,
    },
    /// Too many requests await a response on the session.
    #[error("session {session}: {max} requests already await a response")]
    TooManyPending {
        /// The session.
        session: SessionId,
        /// The limit.
        max: usize,
    },
}

/// The outcome of a publish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Sessions the message was queued to.
    pub sent: usize,
    /// Subscribed sessions whose window was full (the message was not queued to them).
    pub window_full: usize,
}

/// A snapshot of one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session.
    pub id: SessionId,
    /// Its declared role.
    pub role: Option<String>,
    /// Whether a connection carries it.
    pub attached: bool,
    /// Its subscriptions.
    pub subscriptions: Vec<String>,
    /// Frames sent and not yet acknowledged.
    pub unacked: usize,
    /// Highest in-order seq received.
    pub received: u64,
    /// Requests awaiting a response.
    pub pending_requests: usize,
    /// Counters.
    pub stats: SessionStats,
}

/// Why a connection must let go of its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kick {
    Replaced,
    Closed,
}

/// The link between a session and the task of the connection carrying it.
#[derive(Debug)]
struct ConnLink {
    id: u64,
    wake: Notify,
    kick: OnceLock<Kick>,
}

impl ConnLink {
    fn kick(&self, why: Kick) {
        let _ = self.kick.set(why);
        self.wake.notify_one();
    }
}

#[derive(Debug)]
struct Entry {
    session: Session,
    role: Option<String>,
    subscriptions: Vec<String>,
    link: Option<Arc<ConnLink>>,
    /// Order of the last attach (for "the most recently connected billing system").
    attached_order: u64,
    /// Seqs of the application's requests awaiting a response.
    pending: HashSet<u64>,
}

impl Entry {
    fn wake(&self) {
        if let Some(link) = &self.link {
            link.wake.notify_one();
        }
    }

    fn owned_by(&self, conn: u64) -> bool {
        self.link.as_ref().is_some_and(|l| l.id == conn)
    }

    fn send(&mut self, frame: Frame) -> Result<u64, HubError> {
        let seq = self
            .session
            .send(frame)
            .map_err(|source| HubError::Session {
                session: self.session.id().clone(),
                source,
            })?;
        self.wake();
        Ok(seq)
    }

    fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.session.id().clone(),
            role: self.role.clone(),
            attached: self.session.is_attached(),
            subscriptions: self.subscriptions.clone(),
            unacked: self.session.unacked(),
            received: self.session.received(),
            pending_requests: self.pending.len(),
            stats: self.session.stats(),
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    sessions: HashMap<SessionId, Entry>,
    attach_counter: u64,
}

impl Registry {
    fn owned(&mut self, sid: &SessionId, conn: u64) -> Option<&mut Entry> {
        self.sessions.get_mut(sid).filter(|e| e.owned_by(conn))
    }

    fn billing(&self) -> Option<&SessionId> {
        self.sessions
            .values()
            .filter(|e| e.role.as_deref() == Some(ROLE_BILLING))
            .max_by_key(|e| (e.session.is_attached(), e.attached_order))
            .map(|e| e.session.id())
    }

    fn resolve(&self, target: &Target) -> Result<SessionId, HubError> {
        match target {
            Target::Session(id) => Ok(id.clone()),
            Target::Billing => self.billing().cloned().ok_or(HubError::NoBillingSystem),
        }
    }

    fn entry(&mut self, id: &SessionId) -> Result<&mut Entry, HubError> {
        self.sessions
            .get_mut(id)
            .ok_or_else(|| HubError::UnknownSession(id.clone()))
    }

    /// Removes a session for good: its connection is told to let go, its pending requests
    /// fail, the application learns what was never acknowledged.
    fn close(&mut self, id: &SessionId, reason: &str, kick: Kick, events: &Sender<HubEvent>) {
        let Some(entry) = self.sessions.remove(id) else {
            return;
        };
        if let Some(link) = &entry.link {
            link.kick(kick);
        }
        for seq in entry.pending {
            let _ = events.send(HubEvent::RequestFailed {
                request: RequestRef {
                    session: id.clone(),
                    seq,
                },
                failure: RequestFailure::SessionClosed {
                    reason: reason.to_owned(),
                },
            });
        }
        let _ = events.send(HubEvent::Closed {
            session: id.clone(),
            reason: reason.to_owned(),
            unacked: entry.session.into_unacked(),
        });
    }
}

struct Shared {
    cfg: ServerConfig,
    state: Mutex<Registry>,
    events: Sender<HubEvent>,
    stop: watch::Sender<bool>,
}

impl Shared {
    fn new(cfg: ServerConfig) -> (Arc<Self>, Receiver<HubEvent>) {
        let (events, rx) = crossbeam_channel::unbounded();
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Self {
            cfg,
            state: Mutex::new(Registry::default()),
            events,
            stop,
        });
        (shared, rx)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave a session half-updated in a way that
        // matters more than stopping the channel would; keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: HubEvent) {
        let _ = self.events.send(event);
    }

    /// What the CONNECT response announces: window, keepalive and expiry.
    fn limits(&self) -> (u64, u64, u64) {
        (
            self.cfg.session.window as u64,
            self.cfg.keepalive.as_millis() as u64,
            self.cfg.session.expiry.as_millis() as u64,
        )
    }

    /// The CONNECT handshake: resume the requested session, or open a new one.
    fn connect(
        &self,
        now: Instant,
        req: ConnectRequest,
        link: &Arc<ConnLink>,
    ) -> Result<(SessionId, ConnectResponse), (u16, String)> {
        let (window, keepalive_ms, expiry_ms) = self.limits();
        let mut reg = self.lock();
        let reg = &mut *reg;
        let mut refused: Option<(SessionId, ResumeRefused)> = None;
        if let Some(r) = req.resume {
            let outcome = match reg.sessions.get_mut(&r.session) {
                None => Err(ResumeRefused::Unknown(r.session.clone())),
                Some(entry) => entry.session.resume(now, r.received, r.window),
            };
            match outcome {
                Ok(_) => {
                    reg.attach_counter += 1;
                    let order = reg.attach_counter;
                    let Some(entry) = reg.sessions.get_mut(&r.session) else {
                        return Err((code::INTERNAL, "session vanished during resume".into()));
                    };
                    if let Some(old) = entry.link.replace(link.clone()) {
                        // The old connection may not have noticed it is dead yet.
                        old.kick(Kick::Replaced);
                    }
                    entry.attached_order = order;
                    if req.role.is_some() {
                        entry.role = req.role;
                    }
                    add_subscriptions(&mut entry.subscriptions, req.subscribe);
                    let resp = ConnectResponse {
                        session: r.session.clone(),
                        resumed: true,
                        previous: None,
                        received: entry.session.received(),
                        code: None,
                        reason: None,
                        window,
                        keepalive_ms,
                        expiry_ms,
                    };
                    self.emit(HubEvent::Connected {
                        session: r.session.clone(),
                        role: entry.role.clone(),
                        resumed: true,
                        previous: None,
                    });
                    return Ok((r.session, resp));
                }
                Err(why) => {
                    reg.close(
                        &r.session,
                        &format!("resume refused: {why}"),
                        Kick::Replaced,
                        &self.events,
                    );
                    refused = Some((r.session, why));
                }
            }
        }
        if reg.sessions.len() >= self.cfg.max_sessions {
            return Err((
                code::UNAVAILABLE,
                format!(
                    "too many sessions ({}); resume an existing one or retry later",
                    self.cfg.max_sessions
                ),
            ));
        }
        let id = loop {
            let id = SessionId::random().map_err(|e| {
                (
                    code::INTERNAL,
                    format!("no randomness for a session id: {e}"),
                )
            })?;
            if !reg.sessions.contains_key(&id) {
                break id;
            }
        };
        reg.attach_counter += 1;
        let mut subscriptions = Vec::new();
        add_subscriptions(&mut subscriptions, req.subscribe);
        let entry = Entry {
            session: Session::new(id.clone(), self.cfg.session.clone()),
            role: req.role,
            subscriptions,
            link: Some(link.clone()),
            attached_order: reg.attach_counter,
            pending: HashSet::new(),
        };
        self.emit(HubEvent::Connected {
            session: id.clone(),
            role: entry.role.clone(),
            resumed: false,
            previous: refused.as_ref().map(|(p, _)| p.clone()),
        });
        reg.sessions.insert(id.clone(), entry);
        let (previous, code, reason) = match refused {
            Some((p, why)) => (
                Some(p.clone()),
                Some(why.code()),
                Some(format!(
                    "cannot resume session {p}: {why}; new session {id}"
                )),
            ),
            None => (None, None, None),
        };
        let resp = ConnectResponse {
            session: id.clone(),
            resumed: false,
            previous,
            received: 0,
            code,
            reason,
            window,
            keepalive_ms,
            expiry_ms,
        };
        Ok((id, resp))
    }

    /// Ends expired detached sessions.
    fn sweep(&self, now: Instant) {
        let mut reg = self.lock();
        let expired: Vec<SessionId> = reg
            .sessions
            .values()
            .filter(|e| e.session.is_expired(now))
            .map(|e| e.session.id().clone())
            .collect();
        for id in expired {
            reg.close(&id, "expired", Kick::Closed, &self.events);
        }
    }
}

fn add_subscriptions(subs: &mut Vec<String>, new: Vec<String>) {
    for p in new {
        if !subs.contains(&p) {
            subs.push(p);
        }
    }
}

/// The application's handle on the channel: cheap to clone, `Send + Sync`, every method
/// synchronous and non-blocking (usable from the daemon's control thread).
#[derive(Clone)]
pub struct ChannelHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChannelHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelHub")
            .field("bind", &self.shared.cfg.bind)
            .finish_non_exhaustive()
    }
}

impl ChannelHub {
    /// Whether any session subscribes to `package` (so a caller can skip building a body
    /// nobody would receive).
    pub fn has_subscribers(&self, package: &str) -> bool {
        self.shared
            .lock()
            .sessions
            .values()
            .any(|e| e.subscriptions.iter().any(|p| p == package))
    }

    /// Queues a `message` to every session subscribed to `body.package` (attached or not:
    /// a detached session gets it on resume).
    pub fn publish(&self, body: Body) -> Published {
        let mut reg = self.shared.lock();
        let mut out = Published::default();
        for entry in reg.sessions.values_mut() {
            if !entry.subscriptions.contains(&body.package) {
                continue;
            }
            match entry.send(Frame::with_body(FrameType::Message, body.clone())) {
                Ok(_) => out.sent += 1,
                Err(_) => out.window_full += 1,
            }
        }
        out
    }

    /// Queues a `request`; its response comes back as [`HubEvent::Response`] (or
    /// [`HubEvent::RequestFailed`]) with the returned reference.
    pub fn request(&self, to: &Target, body: Body) -> Result<RequestRef, HubError> {
        let mut reg = self.shared.lock();
        let id = reg.resolve(to)?;
        let max = self.shared.cfg.max_pending_requests;
        let entry = reg.entry(&id)?;
        if entry.pending.len() >= max {
            return Err(HubError::TooManyPending { session: id, max });
        }
        let seq = entry.send(Frame::with_body(FrameType::Request, body))?;
        entry.pending.insert(seq);
        Ok(RequestRef { session: id, seq })
    }

    /// Queues a `message` to one session; returns the session and the message's seq.
    pub fn message(&self, to: &Target, body: Body) -> Result<RequestRef, HubError> {
        let mut reg = self.shared.lock();
        let id = reg.resolve(to)?;
        let seq = reg
            .entry(&id)?
            .send(Frame::with_body(FrameType::Message, body))?;
        Ok(RequestRef { session: id, seq })
    }

    /// Answers a request received from a peer ([`HubEvent::Request`]).
    pub fn respond(&self, to: &RequestRef, body: Body) -> Result<(), HubError> {
        let mut frame = Frame::with_body(FrameType::Response, body);
        frame.correlation = Some(to.seq);
        self.shared.lock().entry(&to.session)?.send(frame)?;
        Ok(())
    }

    /// Answers a request received from a peer with an `error` frame.
    pub fn respond_error(&self, to: &RequestRef, code: u16, reason: &str) -> Result<(), HubError> {
        let mut frame = Frame::error(code, reason);
        frame.correlation = Some(to.seq);
        self.shared.lock().entry(&to.session)?.send(frame)?;
        Ok(())
    }

    /// Whether a billing system is connected right now (a session with role `billing` carried by
    /// a live connection). The engine's fail-open / fail-closed policy applies when not.
    pub fn billing_connected(&self) -> bool {
        self.shared
            .lock()
            .sessions
            .values()
            .any(|e| e.role.as_deref() == Some(ROLE_BILLING) && e.session.is_attached())
    }

    /// The session [`Target::Billing`] currently designates.
    pub fn billing_session(&self) -> Option<SessionId> {
        self.shared.lock().billing().cloned()
    }

    /// A snapshot of every session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let reg = self.shared.lock();
        let mut v: Vec<SessionInfo> = reg.sessions.values().map(Entry::info).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// A snapshot of one session.
    pub fn session(&self, id: &SessionId) -> Option<SessionInfo> {
        self.shared.lock().sessions.get(id).map(Entry::info)
    }

    /// Ends a session for good (its connection is closed, it cannot be resumed).
    pub fn close_session(&self, id: &SessionId, reason: &str) -> Result<(), HubError> {
        let mut reg = self.shared.lock();
        if !reg.sessions.contains_key(id) {
            return Err(HubError::UnknownSession(id.clone()));
        }
        reg.close(id, reason, Kick::Closed, &self.shared.events);
        Ok(())
    }
}

/// The running server. Dropping it (or [`ChannelServer::shutdown`]) stops it: every attached
/// session gets a `session`/SHUTDOWN message and a close frame.
pub struct ChannelServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    events: Receiver<HubEvent>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ChannelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ChannelServer {
    /// Binds and serves on the current tokio runtime.
    pub async fn bind(cfg: ServerConfig) -> Result<Self, ServerError> {
        let addr = cfg.bind;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let (shared, events) = Shared::new(cfg);
        tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(Self {
            shared,
            local_addr,
            events,
            thread: None,
        })
    }

    /// Binds and serves on a thread of its own (with its own single-threaded tokio runtime):
    /// for synchronous callers such as the daemon.
    pub fn start(cfg: ServerConfig) -> Result<Self, ServerError> {
        let addr = cfg.bind;
        let std_listener = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = std_listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let (shared, events) = Shared::new(cfg);
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rtpedge-channel".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => accept_loop(task_shared, listener).await,
                        Err(e) => tracing::error!(error = %e, "channel: listener unusable"),
                    }
                });
            })
            .map_err(ServerError::Runtime)?;
        Ok(Self {
            shared,
            local_addr,
            events,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The application's handle.
    pub fn hub(&self) -> ChannelHub {
        ChannelHub {
            shared: self.shared.clone(),
        }
    }

    /// The application's event receiver (a clone: all clones share one queue).
    pub fn events(&self) -> Receiver<HubEvent> {
        self.events.clone()
    }

    /// Stops serving (and, for [`ChannelServer::start`], waits for the thread, at most about
    /// a second).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ChannelServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.stop.subscribe();
    let period =
        (shared.cfg.session.expiry / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(period);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conns = JoinSet::new();
    let mut next_conn: u64 = 0;
    tracing::info!(addr = %shared.cfg.bind, "channel: listening");
    loop {
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    if conns.len() >= shared.cfg.max_connections {
                        tracing::warn!(%peer, max = shared.cfg.max_connections, "channel: too many connections, refused");
                        continue;
                    }
                    next_conn += 1;
                    conns.spawn(connection(shared.clone(), tcp, peer, next_conn));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "channel: accept failed");
                    sleep(Duration::from_millis(20)).await;
                }
            },
            _ = sweep.tick() => shared.sweep(Instant::now()),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    // Let the connections say goodbye (SHUTDOWN and a close frame), briefly.
    let _ = timeout(Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

/// What the client offered as subprotocols.
enum Negotiation {
    Accepted,
    NoneOffered,
}

// The signature is tungstenite's handshake callback's.
#[allow(clippy::result_large_err)]
fn negotiate(
    req: &Request,
    mut resp: Response,
    out: &mut Negotiation,
) -> Result<Response, ErrorResponse> {
    let offered: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if offered.contains(&SUBPROTOCOL) {
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        *out = Negotiation::Accepted;
        Ok(resp)
    } else if offered.is_empty() {
        *out = Negotiation::NoneOffered;
        Ok(resp)
    } else {
        let mut err = ErrorResponse::new(Some(format!(
            "unsupported WebSocket subprotocol {}; this endpoint speaks {SUBPROTOCOL}\n",
            offered.join(", ")
        )));
        *err.status_mut() = StatusCode::BAD_REQUEST;
        Err(err)
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;
type WsSink = futures_util::stream::SplitSink<Ws, Message>;
type WsStream = futures_util::stream::SplitStream<Ws>;

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, conn: u64) {
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.cfg;
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(cfg.max_frame_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes));
    let mut negotiation = Negotiation::NoneOffered;
    let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    let accepted = timeout_at(
        deadline,
        accept_hdr_async_with_config(
            tcp,
            |req: &Request, resp: Response| negotiate(req, resp, &mut negotiation),
            Some(ws_cfg),
        ),
    )
    .await;
    let mut ws: Ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "channel: WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "channel: WebSocket handshake timed out");
            return;
        }
    };
    if matches!(negotiation, Negotiation::NoneOffered) {
        let reason = format!("subprotocol {SUBPROTOCOL} required (none offered)");
        let _ = timeout(Duration::from_secs(1), async {
            ws.close(Some(CloseFrame {
                code: CloseCode::from(close_code::PROTOCOL),
                reason: reason.into(),
            }))
            .await?;
            // Complete the closing handshake, so the peer reads the reason before the socket
            // goes.
            while let Some(Ok(_)) = ws.next().await {}
            Ok::<(), tokio_tungstenite::tungstenite::Error>(())
        })
        .await;
        return;
    }
    let (mut sink, mut stream) = ws.split();
    let mut outbox = Outbox::new(Instant::now());
    let link = Arc::new(ConnLink {
        id: conn,
        wake: Notify::new(),
        kick: OnceLock::new(),
    });
    let Some(sid) = await_connect(
        &shared,
        &link,
        deadline,
        &mut sink,
        &mut stream,
        &mut outbox,
    )
    .await
    else {
        return;
    };
    tracing::debug!(%peer, session = %sid, "channel: session attached");
    let (reason, close) = serve(&shared, &sid, &link, &mut sink, &mut stream, &mut outbox).await;
    tracing::debug!(%peer, session = %sid, reason, "channel: connection ended");
    {
        let mut reg = shared.lock();
        if let Some(entry) = reg.owned(&sid, conn) {
            entry.session.detach(Instant::now());
            entry.link = None;
            shared.emit(HubEvent::Disconnected {
                session: sid.clone(),
                reason: reason.clone(),
            });
        }
    }
    if let Some(close) = close {
        outbox.push(Instant::now(), close);
        let _ = timeout(Duration::from_millis(500), async {
            outbox.drive(&mut sink).await?;
            while let Some(Ok(_)) = stream.next().await {}
            Ok::<(), tokio_tungstenite::tungstenite::Error>(())
        })
        .await;
    }
}

/// Waits for the CONNECT; errors (unsequenced: there is no session yet) for anything else.
async fn await_connect(
    shared: &Shared,
    link: &Arc<ConnLink>,
    deadline: tokio::time::Instant,
    sink: &mut WsSink,
    stream: &mut WsStream,
    outbox: &mut Outbox,
) -> Option<SessionId> {
    loop {
        if timeout_at(deadline, outbox.drive(sink))
            .await
            .ok()?
            .is_err()
        {
            return None;
        }
        let msg = match timeout_at(deadline, stream.next()).await {
            Err(_) => {
                let reason = format!(
                    "no CONNECT within {} ms",
                    shared.cfg.handshake_timeout.as_millis()
                );
                outbox.push(Instant::now(), close_frame(close_code::NO_CONNECT, &reason));
                let _ = timeout(Duration::from_millis(500), async {
                    outbox.drive(sink).await?;
                    while let Some(Ok(_)) = stream.next().await {}
                    Ok::<(), tokio_tungstenite::tungstenite::Error>(())
                })
                .await;
                return None;
            }
            Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(m))) => m,
        };
        let now = Instant::now();
        let error = match msg {
            Message::Text(text) => match Frame::parse(&text) {
                Err(m) => Frame::error(code::BAD_FRAME, m.error.to_string()),
                Ok(f)
                    if f.kind == FrameType::Request && f.is(package::SESSION, action::CONNECT) =>
                {
                    match ConnectRequest::from_frame(&f) {
                        Err(e) => Frame::error(code::BAD_FRAME, format!("CONNECT: {e}")),
                        Ok(req) => match shared.connect(now, req, link) {
                            Ok((sid, resp)) => {
                                outbox.push_text(now, resp.to_frame().encode());
                                return Some(sid);
                            }
                            Err((c, reason)) => Frame::error(c, reason),
                        },
                    }
                }
                Ok(f) => Frame::error(
                    code::CONNECT_REQUIRED,
                    format!(
                        "the first frame of a connection must be a CONNECT request (package \"session\"), got a {} frame{}",
                        f.kind,
                        f.action.map(|a| format!(" ({a})")).unwrap_or_default()
                    ),
                ),
            },
            Message::Binary(_) => Frame::error(
                code::BAD_FRAME,
                "binary WebSocket messages are not supported; frames are JSON text",
            ),
            Message::Close(_) => return None,
            _ => continue,
        };
        outbox.push_text(now, error.encode());
    }
}

/// The connection loop, once the session is attached. Returns why it ended and the close frame
/// to send, if any.
async fn serve(
    shared: &Shared,
    sid: &SessionId,
    link: &Arc<ConnLink>,
    sink: &mut WsSink,
    stream: &mut WsStream,
    outbox: &mut Outbox,
) -> (String, Option<Message>) {
    let cfg = &shared.cfg;
    let dead_after = cfg.keepalive * cfg.keepalive_misses.max(1);
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.keepalive, cfg.keepalive);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = shared.stop.subscribe();
    let mut last_rx = Instant::now();
    loop {
        let now = Instant::now();
        // What the session has to send (queued by the hub, retransmissions, acks).
        let ack_at = {
            let mut reg = shared.lock();
            let Some(entry) = reg.owned(sid, link.id) else {
                return match link.kick.get() {
                    Some(Kick::Closed) => (
                        "session closed".into(),
                        Some(close_frame(close_code::SESSION_CLOSED, "session closed")),
                    ),
                    _ => (
                        "session resumed on another connection".into(),
                        Some(close_frame(
                            close_code::REPLACED,
                            "session resumed on another connection",
                        )),
                    ),
                };
            };
            while let Some(text) = entry.session.poll_transmit(now) {
                outbox.push_text(now, text);
            }
            entry.session.poll_timeout()
        };
        if *stop.borrow() {
            return shutdown(shared, sid, link, outbox);
        }
        let backpressure = shared.events.len() >= cfg.app_queue_limit;
        let ack_timer = async {
            match ack_at {
                Some(t) => sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = outbox.drive(sink), if !outbox.is_idle() => {
                if let Err(e) = r {
                    return (format!("write failed: {e}"), None);
                }
            }
            msg = stream.next(), if !backpressure => {
                let now = Instant::now();
                last_rx = now;
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(end) = handle_text(shared, sid, link.id, now, &text, outbox) {
                            return end;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let mut reg = shared.lock();
                        if let Some(entry) = reg.owned(sid, link.id)
                            && let Some(t) = entry.session.send_error(
                                code::BAD_FRAME,
                                "binary WebSocket messages are not supported; frames are JSON text",
                                None,
                            )
                        {
                            outbox.push_best_effort(now, t);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return ("closed by peer".into(), None),
                    Some(Ok(_)) => {} // ping (answered by tungstenite), pong
                    Some(Err(e)) => return (format!("read failed: {e}"), None),
                }
            }
            _ = link.wake.notified() => {}
            _ = ack_timer => {}
            _ = sleep(Duration::from_millis(2)), if backpressure => {}
            _ = ping.tick() => {
                let now = Instant::now();
                let silent = now.saturating_duration_since(last_rx);
                if silent >= dead_after {
                    return (format!("keepalive: peer silent for {} ms", silent.as_millis()), None);
                }
                if outbox.stalled_for(now) >= dead_after {
                    return ("peer is not reading".into(), None);
                }
                outbox.push(now, Message::Ping(Vec::new().into()));
            }
            _ = stop.changed() => return shutdown(shared, sid, link, outbox),
        }
    }
}

/// Server shutdown: a SHUTDOWN message (best effort) before the close frame.
fn shutdown(
    shared: &Shared,
    sid: &SessionId,
    link: &ConnLink,
    outbox: &mut Outbox,
) -> (String, Option<Message>) {
    let now = Instant::now();
    let mut reg = shared.lock();
    if let Some(entry) = reg.owned(sid, link.id) {
        let body = Body::new(
            package::SESSION,
            action::SHUTDOWN,
            json!({"reason": "server shutting down"}),
        );
        let _ = entry
            .session
            .send(Frame::with_body(FrameType::Message, body));
        while let Some(text) = entry.session.poll_transmit(now) {
            outbox.push_text(now, text);
        }
    }
    (
        "server shutting down".into(),
        Some(close_frame(close_code::GOING_AWAY, "server shutting down")),
    )
}

/// One text message from the peer. Returns how the connection ends, if it does.
fn handle_text(
    shared: &Shared,
    sid: &SessionId,
    conn: u64,
    now: Instant,
    text: &str,
    outbox: &mut Outbox,
) -> Option<(String, Option<Message>)> {
    let mut reg = shared.lock();
    let reg = &mut *reg;
    let entry = reg.owned(sid, conn)?;
    let inbound = match Frame::parse(text) {
        Err(m) => entry.session.handle_malformed(now, m),
        Ok(f) if f.seq.is_none() && f.is(package::SESSION, action::CONNECT) => {
            let reason = format!(
                "CONNECT is only valid as the first frame of a connection; this one carries session {sid}"
            );
            if let Some(t) = entry.session.send_error(code::BAD_FRAME, reason, None) {
                outbox.push_best_effort(now, t);
            }
            entry.wake();
            return None;
        }
        Ok(f) => entry.session.handle(now, f),
    };
    let mut error: Option<(u16, String, Option<u64>)> = None;
    match inbound {
        Inbound::Deliver(frame) => match route(shared, entry, frame) {
            Route::Done => {}
            Route::Error(c, reason, corr) => error = Some((c, reason, corr)),
            Route::Shutdown => {
                reg.close(sid, "shut down by the peer", Kick::Closed, &shared.events);
                return Some((
                    "session shut down by the peer".into(),
                    Some(close_frame(close_code::SESSION_CLOSED, "session shut down")),
                ));
            }
        },
        Inbound::Ack | Inbound::Duplicate { .. } => {}
        Inbound::Gap { expected, got } => {
            error = Some((
                code::SEQUENCE_GAP,
                format!(
                    "field `seq`: {got} received, {expected} expected; frames after a gap are dropped (reconnect and resume to retransmit)"
                ),
                None,
            ));
        }
        Inbound::Rejected { error: e, consumed } => {
            error = Some((code::BAD_FRAME, e.to_string(), consumed));
        }
    }
    if let Some((c, reason, corr)) = error
        && let Some(t) = entry.session.send_error(c, reason, corr)
    {
        outbox.push_best_effort(now, t);
    }
    None
}

enum Route {
    Done,
    Error(u16, String, Option<u64>),
    Shutdown,
}

fn body_of(frame: Frame) -> Body {
    Body {
        package: frame.package.unwrap_or_default(),
        action: frame.action.unwrap_or_default(),
        code: frame.code,
        reason: frame.reason,
        payload: frame.payload,
    }
}

/// A frame delivered in order: the `session` package is handled here, the rest goes to the
/// application.
fn route(shared: &Shared, entry: &mut Entry, frame: Frame) -> Route {
    let Some(seq) = frame.seq else {
        return Route::Done;
    };
    let sid = entry.session.id().clone();
    let in_session_pkg = frame.package.as_deref() == Some(package::SESSION);
    match frame.kind {
        FrameType::Request if in_session_pkg => {
            let act = frame.action.as_deref().unwrap_or_default();
            let subscribe = act == action::SUBSCRIBE;
            if !subscribe && act != action::UNSUBSCRIBE {
                return Route::Error(
                    code::NOT_IMPLEMENTED,
                    format!(
                        "package \"session\" has no request {act:?} (SUBSCRIBE, UNSUBSCRIBE; CONNECT opens a connection)"
                    ),
                    Some(seq),
                );
            }
            let list = match &frame.payload {
                Value::Object(p) => packages(p.get("packages"), "payload.packages"),
                Value::Null => packages(None, "payload.packages"),
                _ => packages(Some(&frame.payload), "payload"),
            };
            let list = match list {
                Ok(l) => l,
                Err(e) => return Route::Error(code::BAD_FRAME, format!("{act}: {e}"), Some(seq)),
            };
            if subscribe {
                add_subscriptions(&mut entry.subscriptions, list);
            } else {
                entry.subscriptions.retain(|p| !list.contains(p));
            }
            let mut resp = Frame::with_body(
                FrameType::Response,
                Body::new(
                    package::SESSION,
                    act,
                    json!({"packages": entry.subscriptions}),
                ),
            );
            resp.correlation = Some(seq);
            if let Err(e) = entry.send(resp) {
                tracing::warn!(session = %sid, error = %e, "channel: cannot answer {act}");
            }
            Route::Done
        }
        FrameType::Message if in_session_pkg => {
            if frame.action.as_deref() == Some(action::SHUTDOWN) {
                Route::Shutdown
            } else {
                Route::Error(
                    code::NOT_IMPLEMENTED,
                    format!(
                        "package \"session\" has no message {:?} (SHUTDOWN)",
                        frame.action.as_deref().unwrap_or_default()
                    ),
                    Some(seq),
                )
            }
        }
        FrameType::Request | FrameType::Message => {
            let request = frame.kind == FrameType::Request;
            let incoming = Incoming {
                session: sid,
                role: entry.role.clone(),
                seq,
                body: body_of(frame),
            };
            shared.emit(if request {
                HubEvent::Request(incoming)
            } else {
                HubEvent::Message(incoming)
            });
            Route::Done
        }
        FrameType::Response => {
            let Some(corr) = frame.correlation else {
                return Route::Done; // the parser requires it on sequenced responses
            };
            if !entry.pending.remove(&corr) {
                return Route::Error(
                    code::BAD_FRAME,
                    format!("field `correlation`: no request with seq {corr} awaits a response"),
                    Some(seq),
                );
            }
            shared.emit(HubEvent::Response {
                request: RequestRef {
                    session: sid,
                    seq: corr,
                },
                body: body_of(frame),
            });
            Route::Done
        }
        FrameType::Error => {
            let code = frame.code.unwrap_or(code::BAD_FRAME);
            let reason = frame.reason.unwrap_or_default();
            match frame.correlation {
                Some(corr) if entry.pending.remove(&corr) => shared.emit(HubEvent::RequestFailed {
                    request: RequestRef {
                        session: sid,
                        seq: corr,
                    },
                    failure: RequestFailure::Remote { code, reason },
                }),
                correlation => shared.emit(HubEvent::PeerError {
                    session: sid,
                    code,
                    reason,
                    correlation,
                }),
            }
            Route::Done
        }
        FrameType::Ack => Route::Done,
    }
}
