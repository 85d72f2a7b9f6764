//! WebSocket plumbing shared by the server and the client: a cancel-safe outgoing queue.
//!
//! # What this module owns
//! Getting queued WebSocket messages into a sink such that a `select!` may drop the write at
//! any point without losing or duplicating a message, and noticing a peer that stopped reading.
//!
//! # What it must not touch
//! Frames and sessions: by the time a message is queued here, the session has decided it.

use std::{
    collections::VecDeque,
    future::poll_fn,
    time::{Duration, Instant},
};

use futures_util::{Sink, SinkExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Queue length beyond which best-effort frames are dropped.
const BEST_EFFORT_BACKLOG: usize = 64;

/// Messages waiting to be written, written in order. [`Outbox::drive`] is cancel-safe: a
/// message leaves the queue only when the sink has accepted it.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: VecDeque<Message>,
    /// Accepted by the sink, not yet flushed.
    dirty: bool,
    /// Last time the sink accepted or flushed something (or the queue became busy).
    progress: Instant,
}

impl Outbox {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            dirty: false,
            progress: now,
        }
    }

    pub(crate) fn push(&mut self, now: Instant, message: Message) {
        if self.is_idle() {
            self.progress = now;
        }
        self.queue.push_back(message);
    }

    pub(crate) fn push_text(&mut self, now: Instant, text: String) {
        self.push(now, Message::text(text));
    }

    /// Queues an unsequenced, informational frame (an error that could not enter the
    /// session's window) unless the queue is already long: such frames are best effort, and a
    /// peer that floods bad frames without reading must not grow the queue without bound.
    pub(crate) fn push_best_effort(&mut self, now: Instant, text: String) {
        if self.queue.len() < BEST_EFFORT_BACKLOG {
            self.push_text(now, text);
        }
    }

    /// Nothing queued and nothing unflushed.
    pub(crate) fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.dirty
    }

    /// How long the outbox has been busy without the sink making progress.
    pub(crate) fn stalled_for(&self, now: Instant) -> Duration {
        if self.is_idle() {
            Duration::ZERO
        } else {
            now.saturating_duration_since(self.progress)
        }
    }

    /// Writes everything queued and flushes. Cancel-safe.
    pub(crate) async fn drive<S>(&mut self, sink: &mut S) -> Result<(), WsError>
    where
        S: Sink<Message, Error = WsError> + Unpin,
    {
        while !self.queue.is_empty() {
            poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
            if let Some(m) = self.queue.pop_front() {
                sink.start_send_unpin(m)?;
                self.dirty = true;
                self.progress = Instant::now();
            }
        }
        if self.dirty {
            sink.flush().await?;
            self.dirty = false;
            self.progress = Instant::now();
        }
        Ok(())
    }
}
