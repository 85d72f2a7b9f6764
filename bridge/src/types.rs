//! Identifiers and signalled parameters of legs and splices.

use std::{fmt, net::SocketAddr, time::Duration};

/// A leg: one endpoint's media path through the host (an RTP port and its RTCP port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leg-{}", self.0)
    }
}

/// A splice: two or more legs whose media is forwarded between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpliceId(pub u64);

impl fmt::Display for SpliceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "splice-{}", self.0)
    }
}

/// How a leg's remote is established from signaling and traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// The signalled address and port, trusted: only that source is accepted.
    Exact,
    /// The signalled address; the port is learned from the first valid packet from it.
    Address,
    /// The first valid source after signaling, within the learning window, is locked (NAT).
    Learning,
    /// Asymmetric RTP (ng `asymmetric`): the remote does not send from the port it receives
    /// on. Media from the signalled address is accepted from any port, at any time; nothing is
    /// ever learned, so media (RTP and RTCP) always goes to the signalled addresses.
    Asymmetric,
}

impl Policy {
    /// `exact`, `address` or `learning`.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::Exact => "exact",
            Policy::Address => "address",
            Policy::Learning => "learning",
            Policy::Asymmetric => "asymmetric",
        }
    }
}

/// The remote side of a leg as signaling describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSpec {
    /// Latching policy.
    pub policy: Policy,
    /// Signalled RTP address (SDP c= and m=): where media is sent until a source is latched.
    /// Required by `Exact` and `Address`.
    pub rtp: Option<SocketAddr>,
    /// Signalled RTCP address (a=rtcp); defaults to the RTP port + 1, or the RTP address with
    /// rtcp-mux.
    pub rtcp: Option<SocketAddr>,
    /// How long after signaling a source may be learned (`Address`, `Learning`).
    pub learn_window: Duration,
    /// Media handover: after locking, accept a new source only after this many consecutive
    /// packets from it that continue the locked SSRC's sequence. `None`: never move.
    pub handover: Option<u16>,
    /// The remote multiplexes RTCP on its RTP port (negotiated rtcp-mux, RFC 5761), also on a
    /// leg provisioned with an RTCP port: RTCP to it leaves from the leg's RTP socket to its
    /// RTP address, and RTCP from it is accepted on the RTP socket only.
    pub rtcp_mux: bool,
}

impl RemoteSpec {
    /// An exact remote.
    pub fn exact(rtp: SocketAddr) -> Self {
        Self {
            policy: Policy::Exact,
            rtp: Some(rtp),
            rtcp: None,
            learn_window: Duration::ZERO,
            handover: None,
            rtcp_mux: false,
        }
    }

    /// A learning remote (optionally with the signalled address as the first destination).
    pub fn learning(rtp: Option<SocketAddr>, window: Duration) -> Self {
        Self {
            policy: Policy::Learning,
            rtp,
            rtcp: None,
            learn_window: window,
            handover: None,
            rtcp_mux: false,
        }
    }

    /// An address-latched remote.
    pub fn address(rtp: SocketAddr, window: Duration) -> Self {
        Self {
            policy: Policy::Address,
            rtp: Some(rtp),
            rtcp: None,
            learn_window: window,
            handover: None,
            rtcp_mux: false,
        }
    }

    /// An asymmetric remote: sources from `rtp`'s address, any port; media always to `rtp`.
    pub fn asymmetric(rtp: SocketAddr) -> Self {
        Self {
            policy: Policy::Asymmetric,
            rtp: Some(rtp),
            rtcp: None,
            learn_window: Duration::ZERO,
            handover: None,
            rtcp_mux: false,
        }
    }

    /// The same, with RTCP multiplexed (or not) on the remote's RTP port.
    pub fn with_rtcp_mux(mut self, rtcp_mux: bool) -> Self {
        self.rtcp_mux = rtcp_mux;
        self
    }
}

/// How a splice forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceMode {
    /// Every packet from one leg goes to every other leg (two legs: a full-duplex call).
    Full,
    /// One talker at a time: the floor holder's packets go to every other leg; others' packets
    /// are dropped and counted. The floor is granted explicitly, or to the first talker, and
    /// released after `release_after` of silence.
    HalfDuplex {
        /// Silence after which the floor is free again.
        release_after: Duration,
    },
}
