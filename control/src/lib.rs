//! rtpedge's control plane: the session engine and its front ends.
//!
//! - [`ng`]: rtpengine's ng control protocol (bencode over UDP), wire-compatible so that
//!   Kamailio's and OpenSIPS' rtpengine modules drive rtpedge unchanged; also a client.
//! - [`sdp`]: SDP parsing and the byte-exact rewriting that offer/answer need.
//! - [`engine`]: the sans-IO session engine (calls, legs, pinholes, timers, CDRs).
//! - [`store`]: CDR storage (SQLite, PostgreSQL) behind a writer thread.
//! - [`ngserver`]: the ng front end (requests → engine → rtpengine-shaped replies).
//! - [`daemon`]: configuration and the daemon's control loop.
pub mod api;
pub mod billing;
pub mod channel;
pub mod charging;
pub mod daemon;
pub mod dialog_end;
pub mod engine;
pub mod ng;
pub mod ngserver;
pub mod sdp;
pub mod services;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;
