//! The reliable session, sans-IO: sequencing, cumulative acknowledgement, the bounded
//! retransmission window, duplicate suppression and the resume checks — for one side of one
//! session, the same code on the server and in the client.
//!
//! # What this module owns
//! Per direction: the next outgoing `seq` (from 1), the retransmission window (every frame sent
//! and not yet acknowledged, at most [`SessionConfig::window`] of them), the transmit cursor of
//! the current connection, the highest in-order `seq` received, and when an acknowledgement is
//! due. Whether a reconnecting peer can resume, and what must then be retransmitted.
//!
//! # What it must not touch
//! Sockets, tasks, the clock (every time-dependent call takes `now`), and the meaning of frames
//! (packages, actions, CONNECT payloads: [`super::server`] and [`super::client`]).
//!
//! # Rules
//! - Outgoing frames get consecutive `seq`s and stay in the window until the peer's cumulative
//!   `ack` covers them. A send that would exceed the window is refused ([`SendError::WindowFull`]);
//!   nothing is ever dropped silently and memory stays bounded.
//! - Within one connection the transport (TCP) is ordered and lossless, so nothing is
//!   retransmitted on a live connection: frames are retransmitted only on resume, from the first
//!   one the peer has not received.
//! - Incoming: `seq == received + 1` is delivered; `seq <= received` is a duplicate (not
//!   delivered, acknowledged again at once); `seq > received + 1` is a gap (dropped, not buffered,
//!   acknowledged at once so the peer sees where the stream stands; the frames come again after a
//!   resume). A correct peer never produces a gap on a live connection.
//! - Acknowledgements ride on every outgoing frame; when there is nothing to send, a bare `ack`
//!   frame goes out after [`SessionConfig::ack_delay`], or at once when
//!   [`SessionConfig::ack_every`] frames are unacknowledged or a duplicate arrived.
//! - A frame refused for a protocol reason that carries the next expected `seq` consumes that
//!   `seq` (acknowledged, never delivered), so one bad frame never stalls a stream.
//! - Resume (server side, [`Session::resume`]): the peer's `received` must lie in
//!   `[first unacknowledged − 1, last sent]` of our window (else the frames it needs are gone, or
//!   it claims frames never sent); our `received + 1` must lie in the peer's window bounds
//!   `[first, next]` (else it dropped frames we never got, or we have frames it never sent).
//!   Then frames up to the peer's `received` are released and the rest retransmitted; the peer
//!   is told our `received` and retransmits the rest of its window ([`Session::resumed`]).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::frame::{Frame, FrameError, FrameType, Malformed, SessionId, code};

/// Session parameters.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Maximum number of sent, unacknowledged frames (the retransmission window). At least 1.
    pub window: usize,
    /// How long an acknowledgement may wait for an outgoing frame to ride on.
    pub ack_delay: Duration,
    /// Acknowledge at once when this many received frames are unacknowledged.
    pub ack_every: u64,
    /// How long a detached session stays resumable.
    pub expiry: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            window: 1024,
            ack_delay: Duration::from_millis(20),
            ack_every: 32,
            expiry: Duration::from_secs(120),
        }
    }
}

/// The sequence numbers of a side's unacknowledged frames: `first..next` (`next` exclusive;
/// `first == next` when nothing is unacknowledged). `next` is the `seq` the next new frame gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowBounds {
    /// The oldest unacknowledged `seq` (or `next` if none).
    pub first: u64,
    /// The `seq` of the next new frame.
    pub next: u64,
}

/// Counters of one session (over all its connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Sequenced frames transmitted for the first time.
    pub sent: u64,
    /// Sequenced frames transmitted again after a resume.
    pub retransmitted: u64,
    /// Frames delivered (in order, once).
    pub delivered: u64,
    /// Duplicates received (not delivered).
    pub duplicates: u64,
    /// Frames received ahead of a gap (dropped).
    pub gaps: u64,
    /// Frames refused for a protocol reason.
    pub rejected: u64,
    /// Sends refused because the window was full.
    pub window_full: u64,
    /// Bare ack frames transmitted.
    pub acks: u64,
}

/// A send refused by the session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The retransmission window is full: the peer has not acknowledged `capacity` frames.
    #[error(
        "retransmission window full: {capacity} frames unacknowledged by the peer; drop or retry later"
    )]
    WindowFull {
        /// The window's size.
        capacity: usize,
    },
    /// Only sequenced frame types can be sent reliably.
    #[error("{0} frames are not sequenced and cannot be sent through the session")]
    NotSequenced(FrameType),
}

/// Why a received frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame did not parse or violated the format.
    #[error(transparent)]
    Malformed(#[from] FrameError),
    /// A sequenced frame without `seq`.
    #[error("field `seq` is missing; {0} frames are sequenced")]
    MissingSeq(FrameType),
    /// An acknowledgement of frames never sent.
    #[error("field `ack`: {ack} acknowledges frames never sent (last sent seq is {last_sent})")]
    AckBeyondSent {
        /// The ack received.
        ack: u64,
        /// Our last transmitted seq.
        last_sent: u64,
    },
    /// A frame naming another session.
    #[error("field `session`: frame for session {got}, this connection carries session {expected}")]
    WrongSession {
        /// The session of this connection.
        expected: SessionId,
        /// The session named by the frame.
        got: SessionId,
    },
}

/// What a received frame amounted to.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// A new, in-order frame: hand it to the application (exactly once).
    Deliver(Frame),
    /// Control information only (a bare ack).
    Ack,
    /// Already received: acknowledged again, not delivered.
    Duplicate {
        /// Its seq.
        seq: u64,
    },
    /// Ahead of the next expected seq: dropped (retransmitted after a resume).
    Gap {
        /// The seq expected.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// Refused; `consumed` is its seq when it was the next expected one (acknowledged, never
    /// delivered).
    Rejected {
        /// Why.
        error: ProtocolError,
        /// The seq consumed, if any.
        consumed: Option<u64>,
    },
}

/// Why a session cannot be resumed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    /// No such session (never existed, closed, or forgotten after expiry).
    #[error("unknown or expired session {0}")]
    Unknown(SessionId),
    /// Detached for longer than the expiry.
    #[error("session expired after {idle_ms} ms detached")]
    Expired {
        /// How long it was detached.
        idle_ms: u128,
    },
    /// The peer needs frames that have already left this side's window.
    #[error(
        "frames {from}..={to} the peer has not received are no longer held (window starts at {first_held})"
    )]
    FramesGone {
        /// First missing.
        from: u64,
        /// Last missing.
        to: u64,
        /// First seq still held.
        first_held: u64,
    },
    /// The peer claims frames this side never sent.
    #[error("the peer claims to have received seq {claimed}, but the last seq sent is {last_sent}")]
    PeerAhead {
        /// What it claims.
        claimed: u64,
        /// What we sent.
        last_sent: u64,
    },
    /// The peer no longer holds frames this side has not received.
    #[error(
        "frames {from}..={to} were not received here and the peer no longer holds them (its window starts at {peer_first})"
    )]
    PeerFramesGone {
        /// First missing.
        from: u64,
        /// Last missing.
        to: u64,
        /// The peer's first held seq.
        peer_first: u64,
    },
    /// This side received frames the peer says it never sent.
    #[error("seq {received} was received here, but the peer's next seq is {peer_next}")]
    PeerBehind {
        /// Our received.
        received: u64,
        /// The peer's next seq.
        peer_next: u64,
    },
    /// Malformed window bounds.
    #[error("invalid window bounds: first {first} > next {next}, or 0")]
    BadWindow {
        /// First.
        first: u64,
        /// Next.
        next: u64,
    },
}

impl ResumeRefused {
    /// The code reported to the peer.
    pub fn code(&self) -> u16 {
        match self {
            ResumeRefused::Unknown(_) | ResumeRefused::Expired { .. } => code::UNKNOWN_SESSION,
            _ => code::RESUME_IMPOSSIBLE,
        }
    }
}

/// The outcome of a successful resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// How many of this side's frames will be retransmitted.
    pub retransmit: u64,
    /// How many frames this side was acknowledged implicitly by the resume.
    pub released: u64,
}

/// One side of one session.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    cfg: SessionConfig,
    /// Seq of the next new outgoing frame.
    next_seq: u64,
    /// Frames `first_unacked()..next_seq`.
    window: VecDeque<Frame>,
    /// Next seq to transmit on the current connection.
    next_tx: u64,
    /// Highest seq ever transmitted (to tell retransmissions from first transmissions).
    max_tx: u64,
    /// Highest in-order seq received.
    received: u64,
    /// Highest ack value sent to the peer.
    acked_to_peer: u64,
    /// When a (bare) acknowledgement is due.
    ack_due: Option<Instant>,
    attached: bool,
    detached_at: Option<Instant>,
    stats: SessionStats,
}

impl Session {
    /// A new session, attached to a connection, nothing sent or received.
    pub fn new(id: SessionId, mut cfg: SessionConfig) -> Self {
        cfg.window = cfg.window.max(1);
        cfg.ack_every = cfg.ack_every.max(1);
        Self {
            id,
            window: VecDeque::with_capacity(cfg.window.min(64)),
            cfg,
            next_seq: 1,
            next_tx: 1,
            max_tx: 0,
            received: 0,
            acked_to_peer: 0,
            ack_due: None,
            attached: true,
            detached_at: None,
            stats: SessionStats::default(),
        }
    }

    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Highest in-order seq received from the peer (0: none).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The bounds of this side's unacknowledged frames.
    pub fn window_bounds(&self) -> WindowBounds {
        WindowBounds {
            first: self.first_unacked(),
            next: self.next_seq,
        }
    }

    /// Number of unacknowledged frames held.
    pub fn unacked(&self) -> usize {
        self.window.len()
    }

    /// Free places in the window.
    pub fn window_free(&self) -> usize {
        self.cfg.window.saturating_sub(self.window.len())
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Whether a connection carries the session.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    fn first_unacked(&self) -> u64 {
        self.next_seq - self.window.len() as u64
    }

    /// Queues a sequenced frame (request, response, message, error): assigns its `seq` and
    /// session and keeps it until acknowledged. Works while detached (it goes out on resume).
    pub fn send(&mut self, mut frame: Frame) -> Result<u64, SendError> {
        if !frame.kind.is_sequenced() {
            return Err(SendError::NotSequenced(frame.kind));
        }
        if self.window.len() >= self.cfg.window {
            self.stats.window_full += 1;
            return Err(SendError::WindowFull {
                capacity: self.cfg.window,
            });
        }
        let seq = self.next_seq;
        frame.seq = Some(seq);
        frame.session = Some(self.id.clone());
        self.window.push_back(frame);
        self.next_seq += 1;
        Ok(seq)
    }

    /// Reports a protocol error to the peer: sequenced (reliable) when the window has room;
    /// otherwise the returned text is an unsequenced error frame to write at once (best effort).
    pub fn send_error(
        &mut self,
        code: u16,
        reason: impl Into<String>,
        correlation: Option<u64>,
    ) -> Option<String> {
        let mut frame = Frame::error(code, reason);
        frame.correlation = correlation;
        match self.send(frame.clone()) {
            Ok(_) => None,
            Err(_) => {
                frame.session = Some(self.id.clone());
                frame.ack = Some(self.received);
                Some(frame.encode())
            }
        }
    }

    /// Processes a frame received on the current connection.
    pub fn handle(&mut self, now: Instant, frame: Frame) -> Inbound {
        if let Some(got) = &frame.session
            && *got != self.id
        {
            let error = ProtocolError::WrongSession {
                expected: self.id.clone(),
                got: got.clone(),
            };
            return self.reject(now, error, frame.seq);
        }
        if frame.kind.is_sequenced() && frame.seq.is_none() {
            return self.reject(now, ProtocolError::MissingSeq(frame.kind), None);
        }
        if let Some(ack) = frame.ack {
            if ack >= self.next_tx {
                let error = ProtocolError::AckBeyondSent {
                    ack,
                    last_sent: self.next_tx - 1,
                };
                return self.reject(now, error, frame.seq);
            }
            self.release(ack);
        }
        let Some(seq) = frame.seq else {
            return Inbound::Ack;
        };
        if seq <= self.received {
            self.stats.duplicates += 1;
            self.ack_due = Some(now);
            Inbound::Duplicate { seq }
        } else if seq == self.received + 1 {
            self.received = seq;
            self.stats.delivered += 1;
            self.schedule_ack(now);
            Inbound::Deliver(frame)
        } else {
            self.stats.gaps += 1;
            self.ack_due = Some(now);
            Inbound::Gap {
                expected: self.received + 1,
                got: seq,
            }
        }
    }

    /// Processes a frame that failed to parse ([`Frame::parse`]).
    pub fn handle_malformed(&mut self, now: Instant, malformed: Malformed) -> Inbound {
        self.reject(
            now,
            ProtocolError::Malformed(malformed.error),
            malformed.seq,
        )
    }

    fn reject(&mut self, now: Instant, error: ProtocolError, seq: Option<u64>) -> Inbound {
        match seq {
            Some(s) if s <= self.received => {
                // A retransmission of a frame already consumed (and already answered).
                self.stats.duplicates += 1;
                self.ack_due = Some(now);
                Inbound::Duplicate { seq: s }
            }
            Some(s) if s == self.received + 1 => {
                self.stats.rejected += 1;
                self.received = s;
                self.schedule_ack(now);
                Inbound::Rejected {
                    error,
                    consumed: Some(s),
                }
            }
            _ => {
                self.stats.rejected += 1;
                Inbound::Rejected {
                    error,
                    consumed: None,
                }
            }
        }
    }

    fn schedule_ack(&mut self, now: Instant) {
        if self.received - self.acked_to_peer >= self.cfg.ack_every {
            self.ack_due = Some(now);
        } else if self.ack_due.is_none() {
            self.ack_due = Some(now + self.cfg.ack_delay);
        }
    }

    /// Releases frames up to `ack` (cumulative).
    fn release(&mut self, ack: u64) -> u64 {
        let mut released = 0;
        while self.first_unacked() <= ack && self.window.pop_front().is_some() {
            released += 1;
        }
        self.next_tx = self.next_tx.max(self.first_unacked());
        released
    }

    /// The next frame to write on the current connection, as JSON text: a queued or
    /// retransmitted frame (carrying the current `ack`), else a bare `ack` when one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<String> {
        if !self.attached {
            return None;
        }
        if self.next_tx < self.next_seq {
            let idx = (self.next_tx - self.first_unacked()) as usize;
            let received = self.received;
            let frame = self.window.get_mut(idx)?;
            frame.ack = (received > 0).then_some(received);
            let text = frame.encode();
            if self.next_tx <= self.max_tx {
                self.stats.retransmitted += 1;
            } else {
                self.stats.sent += 1;
                self.max_tx = self.next_tx;
            }
            self.next_tx += 1;
            self.acked_to_peer = received;
            self.ack_due = None;
            return Some(text);
        }
        match self.ack_due {
            Some(due) if due <= now => {
                let mut frame = Frame::new(FrameType::Ack);
                frame.ack = Some(self.received);
                self.acked_to_peer = self.received;
                self.ack_due = None;
                self.stats.acks += 1;
                Some(frame.encode())
            }
            _ => None,
        }
    }

    /// When [`Session::poll_transmit`] will have an acknowledgement to send (attached), or when
    /// the session expires (detached).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.attached {
            self.ack_due
        } else {
            self.expires_at()
        }
    }

    /// The connection carrying the session is gone; the session stays resumable until
    /// `now + expiry`.
    pub fn detach(&mut self, now: Instant) {
        if self.attached {
            self.attached = false;
            self.detached_at = Some(now);
            self.ack_due = None;
        }
    }

    /// When a detached session expires.
    pub fn expires_at(&self) -> Option<Instant> {
        self.detached_at.map(|t| t + self.cfg.expiry)
    }

    /// Whether the session is detached and past its expiry.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at().is_some_and(|t| now >= t)
    }

    /// Server side: the peer reconnected and says it has received up to `peer_received` and
    /// holds its unacknowledged frames in `peer_window`. On success the session is attached to
    /// the new connection; [`Session::poll_transmit`] then retransmits what the peer lacks, and
    /// the peer must be told [`Session::received`] (it retransmits the rest of its window).
    /// On failure nothing changes.
    pub fn resume(
        &mut self,
        now: Instant,
        peer_received: u64,
        peer_window: WindowBounds,
    ) -> Result<Resumed, ResumeRefused> {
        if let Some(detached) = self.detached_at
            && now.saturating_duration_since(detached) >= self.cfg.expiry
        {
            return Err(ResumeRefused::Expired {
                idle_ms: now.saturating_duration_since(detached).as_millis(),
            });
        }
        self.check_ours(peer_received)?;
        let WindowBounds { first, next } = peer_window;
        if first == 0 || first > next {
            return Err(ResumeRefused::BadWindow { first, next });
        }
        if self.received + 1 < first {
            return Err(ResumeRefused::PeerFramesGone {
                from: self.received + 1,
                to: first - 1,
                peer_first: first,
            });
        }
        if self.received >= next {
            return Err(ResumeRefused::PeerBehind {
                received: self.received,
                peer_next: next,
            });
        }
        Ok(self.reattach(peer_received))
    }

    /// Client side: the server accepted the resume and has received up to `server_received`.
    pub fn resumed(&mut self, server_received: u64) -> Result<Resumed, ResumeRefused> {
        self.check_ours(server_received)?;
        Ok(self.reattach(server_received))
    }

    fn check_ours(&self, peer_received: u64) -> Result<(), ResumeRefused> {
        let first_held = self.first_unacked();
        if peer_received.saturating_add(1) < first_held {
            return Err(ResumeRefused::FramesGone {
                from: peer_received.saturating_add(1),
                to: first_held - 1,
                first_held,
            });
        }
        if peer_received >= self.next_seq {
            return Err(ResumeRefused::PeerAhead {
                claimed: peer_received,
                last_sent: self.next_seq - 1,
            });
        }
        Ok(())
    }

    fn reattach(&mut self, peer_received: u64) -> Resumed {
        let released = self.release(peer_received);
        self.next_tx = peer_received.saturating_add(1);
        self.attached = true;
        self.detached_at = None;
        // The handshake carries our `received` as its ack.
        self.acked_to_peer = self.received;
        self.ack_due = None;
        Resumed {
            retransmit: self.next_seq - self.next_tx,
            released,
        }
    }

    /// Ends the session, returning the frames never acknowledged by the peer (in seq order),
    /// e.g. for the application to send again in a new session.
    pub fn into_unacked(self) -> Vec<Frame> {
        self.window.into()
    }
}
