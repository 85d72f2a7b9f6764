//! rtpedge's userspace RTP bridge.
//!
//! A *leg* is one endpoint's media path through the host: an RTP port (even) and its RTCP port
//! (odd, or rtcp-mux), bound when the leg is provisioned, before any call is active. A *splice*
//! connects legs: full duplex (two legs), one-to-many (more), or half duplex with floor control.
//! Splice and unsplice take effect on the next packet and never rebind a socket.
//!
//! Layers: [`rtp`] (zero-copy validation), [`stats`] (RFC 3550 statistics), [`latch`] (remote
//! policies), [`floor`], [`pool`] (ports with quarantine) and [`core`] (the per-worker decision)
//! are sans-IO and unit tested without sockets or clocks; [`worker`] (epoll, recvmmsg/sendmmsg
//! on preallocated buffers) and [`bridge`] (the owner's handle) do the I/O.
pub mod rtp;
pub mod stats;

pub mod bridge;
pub mod core;
pub mod floor;
pub mod latch;
pub mod pool;
mod reserve;
pub mod sys;
pub mod types;
pub mod worker;

pub use crate::bridge::{Bridge, BridgeConfig, BridgeError, LegInfo, LegRequest};
pub use crate::core::{BridgeEvent, Fork, LegCounters, LegOptions, LegStats};
pub use types::{LegId, Policy, RemoteSpec, SpliceId, SpliceMode};
