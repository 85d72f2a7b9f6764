//! rtpedge's eBPF data plane, userspace side: loads and attaches the XDP ingress and TC egress
//! programs, pins their maps and links under a versioned directory in bpffs so that media keeps
//! flowing across daemon restarts, and exposes pinhole operations through the [`Dataplane`]
//! trait.
//!
//! Owns: the BPF object, pin layout, schema checks, map access. Does not own: call or session
//! state (the daemon), sockets (the bridge). The daemon's unit tests use [`FakeDataplane`], which
//! runs the same decision logic as the kernel program on packets described in memory.

mod clock;
mod error;
mod fake;
mod kernel;
mod loader;
mod pin;
mod types;

use std::{net::SocketAddr, time::Duration};

pub use clock::monotonic_ns;
pub use error::DataplaneError;
pub use fake::{FakeDataplane, Verdict};
pub use kernel::KernelDataplane;
pub use loader::{Attachment, LoadOptions, LoadReport, Status, UnloadReport, load, status, unload};
pub use pin::{DEFAULT_PIN_ROOT, PinLayout, enter_netns, escape_ip_netns_exec_mount_namespace};
pub use rtpedge_common::{Counter, SCHEMA_VERSION, rtp_stats::StreamStats};
pub use types::{
    AttachMode, Dscp, ForwardSpec, GlobalCounters, PinholeCounters, PinholeInfo, PinholeSpec,
    PinholeState, RateLimit, RemotePolicy, parse_port_range, parse_remote,
};

/// The compiled BPF object (XDP ingress and TC egress programs and their maps).
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rtpedge-ebpf"));

/// Bench only: the load generator's XDP receive sink (`xdp_sink` and its maps, see
/// `rtpedge_common::sink`), built with the data plane but a separate object that the daemon
/// never loads. `rtpedge-load --sink xdp` attaches it to the generator's interface.
pub static SINK_BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rtpedge-sink"));

/// Pinhole operations on a data plane: the kernel's pinned maps ([`KernelDataplane`]) or an
/// in-memory model ([`FakeDataplane`]). All addresses are the local address and port media
/// arrives on (the pinhole key).
pub trait Dataplane {
    /// Opens a pinhole, or updates an existing one (re-INVITE): the new policy, DSCP and rate
    /// apply from the next packet; counters are kept; a learned source is kept only if the new
    /// policy is learning with the same address restriction.
    fn open_pinhole(&mut self, spec: &PinholeSpec) -> Result<(), DataplaneError>;
    /// Closes a pinhole: nothing passes from the next packet; the entry and counters stay.
    fn close_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError>;
    /// Removes a pinhole with its counters and learned source.
    fn remove_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError>;
    /// Sets or clears DSCP marking.
    fn set_dscp(&mut self, local: SocketAddr, dscp: Option<Dscp>) -> Result<(), DataplaneError>;
    /// Sets or clears the rate limit.
    fn set_rate_limit(
        &mut self,
        local: SocketAddr,
        rate: Option<RateLimit>,
    ) -> Result<(), DataplaneError>;
    /// Forgets a learning pinhole's latched source and opens a new learning window (media
    /// handover, authorised by signaling).
    fn relearn(
        &mut self,
        local: SocketAddr,
        window: Option<Duration>,
    ) -> Result<(), DataplaneError>;
    /// One pinhole with its counters, if it exists.
    fn pinhole(&self, local: SocketAddr) -> Result<Option<PinholeInfo>, DataplaneError>;
    /// Every pinhole, ordered by local address.
    fn pinholes(&self) -> Result<Vec<PinholeInfo>, DataplaneError>;
    /// Global per-verdict counters.
    fn counters(&self) -> Result<GlobalCounters, DataplaneError>;
    /// The source a learning pinhole latched, if any.
    fn learned_source(&self, local: SocketAddr) -> Result<Option<SocketAddr>, DataplaneError>;
    /// Sets (or with `None` clears) the in-kernel forwarding of what passes the pinhole at
    /// `local`; applies from the next packet. Removing the pinhole removes it too.
    fn set_forward(
        &mut self,
        local: SocketAddr,
        forward: Option<ForwardSpec>,
    ) -> Result<(), DataplaneError>;
    /// The pinhole's forwarding entry, if any.
    fn forward(&self, local: SocketAddr) -> Result<Option<ForwardSpec>, DataplaneError>;
    /// RFC 3550 statistics of the RTP the kernel forwarded from the pinhole (kept from its first
    /// forwarding entry until the pinhole is removed), if it ever had one.
    fn forwarded_rtp(&self, local: SocketAddr) -> Result<Option<StreamStats>, DataplaneError>;
}

/// A boxed data plane is a data plane: the daemon picks the kernel one or the in-memory one
/// (`--no-xdp`) at run time.
impl<T: Dataplane + ?Sized> Dataplane for Box<T> {
    fn open_pinhole(&mut self, spec: &PinholeSpec) -> Result<(), DataplaneError> {
        (**self).open_pinhole(spec)
    }
    fn close_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError> {
        (**self).close_pinhole(local)
    }
    fn remove_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError> {
        (**self).remove_pinhole(local)
    }
    fn set_dscp(&mut self, local: SocketAddr, dscp: Option<Dscp>) -> Result<(), DataplaneError> {
        (**self).set_dscp(local, dscp)
    }
    fn set_rate_limit(
        &mut self,
        local: SocketAddr,
        rate: Option<RateLimit>,
    ) -> Result<(), DataplaneError> {
        (**self).set_rate_limit(local, rate)
    }
    fn relearn(
        &mut self,
        local: SocketAddr,
        window: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        (**self).relearn(local, window)
    }
    fn pinhole(&self, local: SocketAddr) -> Result<Option<PinholeInfo>, DataplaneError> {
        (**self).pinhole(local)
    }
    fn pinholes(&self) -> Result<Vec<PinholeInfo>, DataplaneError> {
        (**self).pinholes()
    }
    fn counters(&self) -> Result<GlobalCounters, DataplaneError> {
        (**self).counters()
    }
    fn learned_source(&self, local: SocketAddr) -> Result<Option<SocketAddr>, DataplaneError> {
        (**self).learned_source(local)
    }
    fn set_forward(
        &mut self,
        local: SocketAddr,
        forward: Option<ForwardSpec>,
    ) -> Result<(), DataplaneError> {
        (**self).set_forward(local, forward)
    }
    fn forward(&self, local: SocketAddr) -> Result<Option<ForwardSpec>, DataplaneError> {
        (**self).forward(local)
    }
    fn forwarded_rtp(&self, local: SocketAddr) -> Result<Option<StreamStats>, DataplaneError> {
        (**self).forwarded_rtp(local)
    }
}
