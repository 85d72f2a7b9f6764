//! Benchmarks and the load generator.
//!
//! - [`mmsg`]: batched UDP I/O (`sendmmsg` / `recvmmsg` over preallocated buffers), with the
//!   received TOS byte and source when asked.
//! - [`rtp`]: RTP-shaped payloads (a valid RTP header with advancing sequence number and
//!   timestamp in front of G.711 silence).
//! - `rtpedge-blast` (binary): a packet blaster (`send`) and a counting receiver (`recv`) built
//!   on the two, used by `benches/xdp-bench` (XDP drop and pass rates against a no-program
//!   baseline, on veth between network namespaces) and by `scripts/demo`.
//! - [`load`]: the load generator behind `rtpedge-load` (binary): calls set up over the ng
//!   protocol on any relay (rtpedge, rtpengine) or directly on an in-process bridge, real RTP
//!   through them at a paced rate, loss, reordering and latency percentiles, the relay's CPU
//!   per packet, a search for the highest loss-free rate, and an ng signaling benchmark.
//!   `benches/relay-compare` runs it against rtpedge and rtpengine and prints the comparison.
//!
//! The XDP benchmark is a script because it needs root and namespaces.

#![deny(missing_docs)]

pub mod load;
pub mod mmsg;
pub mod rtp;

/// Errors of setting up a sender or receiver. The per-batch calls return plain
/// [`std::io::Error`]s: they are on the hot path and the caller decides which are transient.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket call failed.
    #[error("{what}")]
    Io {
        /// What was being done, with the address involved.
        what: String,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// A size or count outside what the sender or receiver supports.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An ng request failed.
    #[error("{what}: {source}")]
    Ng {
        /// The request, with the call.
        what: String,
        /// What the client saw.
        #[source]
        source: rtpedge::ng::ClientError,
    },
    /// The relay answered, but not usably (e.g. no media address in its SDP).
    #[error("{0}")]
    Relay(String),
    /// Loading, attaching or reading the XDP receive sink failed.
    #[error("{what}")]
    Bpf {
        /// The operation.
        what: String,
        /// What aya or the kernel said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The in-process bridge refused an operation.
    #[error("{what}: {source}")]
    Bridge {
        /// The operation.
        what: String,
        /// What the bridge said.
        #[source]
        source: rtpedge_bridge::BridgeError,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
