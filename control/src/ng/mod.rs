//! rtpengine's "ng" control protocol, sans-IO, plus a small blocking client.
//!
//! Kamailio's and OpenSIPS' `rtpengine` modules drive rtpedge through this protocol unchanged:
//! one UDP datagram per request, `<cookie> <bencoded dictionary>`, answered with
//! `<same cookie> <bencoded dictionary>` (a body starting with `{` is JSON instead, and is
//! answered in JSON).
//!
//! # What this module owns
//! - framing: cookie and body ([`split_cookie`], [`encode_reply`]);
//! - the codecs: [`bencode`] (hardened decoder, canonical encoder, [`Value`]) and [`json`];
//! - request typing: [`parse_request`] → [`ParsedRequest`] with a typed [`Request`]
//!   (ping, offer, answer, delete, query, list) whose [`Options`] normalise rtpengine's many
//!   key and flag spellings, including Kamailio's `rtpp-flags` string; errors
//!   ([`RequestError`]) carry the cookie and rtpengine's `error-reason` wording;
//! - reply building ([`reply`]: `ok`, `pong`, `error`, `load limit`, `warning`);
//! - the retransmission [`ReplyCache`] (by cookie, TTL, bounded);
//! - [`NgClient`], a blocking client for the load generator and compatibility tests.
//!
//! # What it must not touch
//! No sockets outside `client.rs`, no threads, no clock (time is passed in), and no call
//! state: what an offer *does* is the session engine's business. This module only turns
//! datagrams into typed requests and replies into datagrams.
//!
//! # Serving loop, for orientation
//! ```text
//! recv(datagram)
//! cookie = split_cookie(datagram)?            // no cookie: drop
//! if let Some(reply) = cache.get(cookie, now) { send(reply); continue }   // retransmission
//! match parse_request(datagram) {
//!     Ok(req)  => reply = engine.handle(req) + req.warnings.to_text() as "warning",
//!     Err(err) => reply = err.reply(),        // None: drop
//! }
//! send(reply); cache.insert(cookie, reply, now)
//! ```

pub mod bencode;
pub mod cache;
pub mod client;
pub mod json;
pub mod message;
pub mod options;
pub mod reply;
pub mod rtpp_flags;

#[cfg(test)]
mod tests;

pub use bencode::{DecodeError, Value, decode, encode};
pub use cache::ReplyCache;
pub use client::{ClientError, NgClient};
pub use message::{
    Answer, Command, Delete, Encoding, List, MissingKey, Offer, ParsedRequest, Query, Request,
    RequestError, RequestErrorKind, ServiceCommand, parse_request, split_cookie,
};
pub use options::{
    AddressFamily, Direction, Flags, Ice, Options, ReceivedFrom, Replace, RtcpMux, SipMessageType,
    Tos, TransportProtocol, Warning, Warnings,
};
pub use reply::encode_reply;
