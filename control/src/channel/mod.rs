//! The reliable event channel: JSON frames over WebSocket between the daemon (server) and
//! external systems — billing systems, dashboards, clearinghouses — with sequence numbers,
//! cumulative acknowledgements, a bounded retransmission window and resume after reconnect.
//!
//! # What this module owns
//! - [`frame`]: the wire format below, typed ([`Frame`]) and validated with precise errors;
//! - [`handshake`]: the CONNECT request and response;
//! - [`session`]: the sans-IO reliable session (sequencing, acks, window, duplicates, resume);
//! - [`server`]: the WebSocket server (`tokio-tungstenite`) and [`ChannelHub`], the
//!   application's synchronous handle (publish, requests, responses, inbound [`HubEvent`]s,
//!   whether a billing system is connected);
//! - [`client`]: an async client with reconnect and resume (tests, integrators, simulators).
//!
//! # What it must not touch
//! The session engine, the ledger, CDR storage, the ng and SIP front ends: this module carries
//! frames and reports events; the daemon decides what a RESERVE, GRANT or EXHAUSTED means.
//! No other module's files are edited from here, and nothing here blocks the daemon's control
//! thread (hub calls take a short lock and return).
//!
//! # Wire format (a contract for external systems: names are stable)
//!
//! Transport: WebSocket, subprotocol **`rtpedge.v1`** (`Sec-WebSocket-Protocol`). A client
//! offering other subprotocols only is refused with HTTP 400 and a body saying why; a client
//! offering none is accepted and closed at once with code 1002 and the reason
//! `subprotocol rtpedge.v1 required (none offered)`. One frame per WebSocket **text** message
//! (binary messages get an error). Messages are at most 1 MiB by default.
//!
//! A frame is a JSON object. Control headers:
//!
//! | field         | type                 | on                                   | meaning |
//! |---------------|----------------------|--------------------------------------|---------|
//! | `type`        | string               | every frame                          | `request`, `response`, `message`, `ack` or `error` |
//! | `session`     | string               | optional (server frames carry it)    | session id: 1–64 of `A-Z a-z 0-9 . _ -` |
//! | `seq`         | integer 1..2^53-1    | request, response, message, error    | this direction's sequence number, from 1, +1 per frame; not on `ack` |
//! | `ack`         | integer 0..2^53-1    | any frame; required on `ack`         | cumulative: the highest in-order `seq` received from the peer |
//! | `correlation` | integer 1..2^53-1    | response (required); error (optional)| the `seq` of the request (or frame) answered |
//! | `package`     | string ≤ 64 bytes    | request, message (required); others  | `session`, `billing`, `call`, `events`, ... |
//!
//! General headers and body:
//!
//! | field     | type             | meaning |
//! |-----------|------------------|---------|
//! | `action`  | string ≤ 64 bytes| required on request and message: CONNECT, SUBSCRIBE, UNSUBSCRIBE, SHUTDOWN, RESERVE, GRANT, USAGE, EXHAUSTED, TOPUP, BLOCK, NOTIFY, ... |
//! | `code`    | integer 100–999  | required on `error`; optional status elsewhere (see [`frame::code`]) |
//! | `reason`  | string           | words for `code` |
//! | `payload` | any JSON         | absent means `null` |
//!
//! Unknown fields are ignored (forward compatibility). Examples:
//!
//! ```text
//! {"type":"request","session":"7f3a…","seq":12,"ack":40,"package":"billing","action":"RESERVE","payload":{"call":"c1","account":"a1","seconds":60}}
//! {"type":"response","seq":41,"ack":12,"correlation":12,"package":"billing","action":"GRANT","payload":{"seconds":60}}
//! {"type":"message","seq":42,"package":"billing","action":"EXHAUSTED","payload":{"account":"a1"}}
//! {"type":"ack","ack":42}
//! {"type":"error","seq":13,"ack":42,"code":400,"reason":"field `seq`: expected an integer from 1 to 2^53-1, got string \"x\""}
//! ```
//!
//! ## Reliability
//! - Every `request`, `response`, `message` and `error` carries `seq`; each direction counts
//!   from 1 per session. The receiver delivers `seq = last + 1` exactly once; a duplicate
//!   (`seq ≤ last`) is acknowledged again and not delivered; a frame after a gap is dropped
//!   (answered with error 409) — on a live connection a correct peer never makes a gap.
//! - Acknowledgement is cumulative (`ack`), piggybacked on any frame or sent as a bare
//!   `{"type":"ack","ack":N}` within 20 ms (at once after 32 unacknowledged frames or a
//!   duplicate). Senders keep unacknowledged frames in a bounded window (1024 frames by
//!   default); when it is full, further sends are refused locally (the application chooses to
//!   drop or retry) — nothing is dropped silently.
//! - A frame that cannot be accepted (bad JSON, wrong field types, unknown `type`, ...) is
//!   answered by an `error` frame (code 400) whose `reason` names the field and the problem;
//!   connection and session survive. If the bad frame carried a usable `seq` equal to the next
//!   expected one, that `seq` is consumed (acknowledged, never delivered) and the error's
//!   `correlation` names it, so one bad frame never stalls a stream. Error frames are
//!   sequenced like the rest, except errors sent before a session exists or while the window
//!   is full: those carry no `seq` and are not retransmitted.
//!
//! ## Sessions: CONNECT and resume
//! The first frame of every connection is a CONNECT request, **without `seq`**:
//!
//! ```text
//! new:    {"type":"request","package":"session","action":"CONNECT","payload":{"role":"billing","subscribe":["call"]}}
//! resume: {"type":"request","package":"session","action":"CONNECT","session":"7f3a…","ack":41,
//!          "payload":{"role":"billing","window":{"first":17,"next":23}}}
//! ```
//!
//! `role` (optional) declares what the peer is; `billing` makes it eligible as *the* billing
//! system (the most recently connected one gets the daemon's billing requests). `subscribe`
//! (optional) lists packages whose published messages the session receives. When resuming,
//! `session` is the session id, `ack` the last `seq` received in order, and `window` the
//! client's unacknowledged frames: `first` the oldest unacknowledged `seq`, `next` the `seq` its
//! next new frame will get (`first == next`: nothing unacknowledged).
//!
//! The response (also without `seq`):
//!
//! ```text
//! {"type":"response","session":"7f3a…","package":"session","action":"CONNECT","ack":16,
//!  "payload":{"resumed":true,"session":"7f3a…","received":16,"window":1024,"keepalive_ms":15000,"expiry_ms":120000}}
//! {"type":"response","session":"c01d…","package":"session","action":"CONNECT","ack":0,"code":404,
//!  "reason":"cannot resume session 7f3a…: unknown or expired session 7f3a…; new session c01d…",
//!  "payload":{"resumed":false,"session":"c01d…","previous":"7f3a…","received":0,...}}
//! ```
//!
//! On `resumed: true` the server retransmits, in order, its frames after the client's `ack`,
//! and the client retransmits its frames after the response's `ack` (`received`); both then
//! continue without loss or duplication. Resumption is refused — `resumed: false`, a new
//! session (seqs from 1), `code` and `reason` — when the session is unknown or expired (404),
//! or when frames one side needs have left the other's window or the two states disagree
//! (412). The client's unacknowledged frames are then lost to the old session (the client
//! library hands them back to its application). If the session is still attached to an older
//! connection (the server has not yet noticed it died), the new connection takes it over and
//! the old one is closed (code 4000).
//!
//! A detached session stays resumable for `expiry_ms` (120 s by default). The server pings
//! every `keepalive_ms` (15 s); a peer silent for 3 intervals is dropped (its session stays
//! resumable).
//!
//! ## The `session` package
//! - `request SUBSCRIBE {"packages": ["call", "events"]}` → `response SUBSCRIBE {"packages": [...all...]}`;
//!   `UNSUBSCRIBE` likewise. Subscriptions belong to the session (they survive a resume).
//! - `message SHUTDOWN`: the session ends for good (client → server: the server closes with
//!   4001; server → client: the server is going away, close 1001 follows).
//!
//! Error codes: see [`frame::code`] (400 bad frame, 404 unknown session, 409 sequence gap,
//! 412 resume impossible, 428 CONNECT required, 500 internal, 501 not
//! implemented, 503 unavailable: shutting down or too many sessions). WebSocket close codes:
//! 1001 server going away, 1002 subprotocol missing, 4000 session resumed on another
//! connection, 4001 session closed (SHUTDOWN or by the daemon), 4002 no CONNECT in time.

pub mod client;
pub mod frame;
pub mod handshake;
mod io;
pub mod server;
pub mod session;

#[cfg(test)]
mod tests;

pub use client::{ChannelClient, ClientConfig, ClientError, ClientEvent};
pub use frame::{Body, Frame, FrameError, FrameType, Malformed, SUBPROTOCOL, SessionId};
pub use handshake::{ConnectRequest, ConnectResponse, ResumeRequest};
pub use server::{
    ChannelHub, ChannelServer, HubError, HubEvent, Incoming, Published, ROLE_BILLING,
    RequestFailure, RequestRef, ServerConfig, ServerError, SessionInfo, Target,
};
pub use session::{
    Inbound, ProtocolError, ResumeRefused, Resumed, SendError, Session, SessionConfig,
    SessionStats, WindowBounds,
};
