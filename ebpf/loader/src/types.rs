//! Typed, validated values of the data-plane API and their conversion to the shared map layout.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use rtpedge_common::{Counter, DSCP_MAX, DSCP_NONE, Pinhole, PinholeKey, logic, policy, state};

use crate::DataplaneError;

/// A DiffServ code point (0..=63).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dscp(u8);

impl Dscp {
    /// Expedited Forwarding (46), the usual class for voice.
    pub const EF: Dscp = Dscp(46);

    /// Validates a code point.
    pub fn new(v: u8) -> Result<Self, DataplaneError> {
        if v > DSCP_MAX {
            return Err(DataplaneError::Invalid(format!(
                "DSCP {v} out of range 0..=63"
            )));
        }
        Ok(Dscp(v))
    }

    /// The 6-bit value.
    pub const fn value(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Dscp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A token-bucket rate limit: sustained packets per second and burst depth in packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate, packets per second (> 0).
    pub pps: u32,
    /// Bucket depth, packets (> 0).
    pub burst: u32,
}

impl RateLimit {
    /// Validates a rate limit.
    pub fn new(pps: u32, burst: u32) -> Result<Self, DataplaneError> {
        if pps == 0 || burst == 0 {
            return Err(DataplaneError::Invalid(format!(
                "rate limit {pps}/{burst}: packets per second and burst must both be > 0"
            )));
        }
        Ok(RateLimit { pps, burst })
    }
}

impl FromStr for RateLimit {
    type Err = DataplaneError;
    /// Parses `PPS/BURST`, e.g. `100/20`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || DataplaneError::Invalid(format!("rate {s:?}: expected PPS/BURST, e.g. 100/20"));
        let (p, b) = s.split_once('/').ok_or_else(bad)?;
        let pps = p.trim().parse().map_err(|_| bad())?;
        let burst = b.trim().parse().map_err(|_| bad())?;
        RateLimit::new(pps, burst)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pps, self.burst)
    }
}

/// Which sources a pinhole admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemotePolicy {
    /// Only this address and port (signalled and trusted).
    Exact(SocketAddr),
    /// Only this address, any port.
    Address(IpAddr),
    /// The first source seen within `window` (from when the pinhole is opened) is latched and
    /// enforced from then on. With `from`, only sources from that address can be latched.
    /// `window: None` means no deadline.
    Learning {
        /// Restrict learning to this address.
        from: Option<IpAddr>,
        /// How long after opening a source may be learned.
        window: Option<Duration>,
    },
    /// Any source: the userspace bridge latches (legs with signalled media handover).
    Any,
}

impl RemotePolicy {
    /// The policy's name as operators see it.
    pub const fn name(&self) -> &'static str {
        match self {
            RemotePolicy::Exact(_) => "exact",
            RemotePolicy::Address(_) => "address",
            RemotePolicy::Learning { .. } => "learning",
            RemotePolicy::Any => "any",
        }
    }
}

/// Everything needed to open (or update) a pinhole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinholeSpec {
    /// Local address and port media arrives on.
    pub local: SocketAddr,
    /// Remote policy.
    pub remote: RemotePolicy,
    /// DSCP to mark passing (and sent) packets with.
    pub dscp: Option<Dscp>,
    /// Optional rate limit.
    pub rate: Option<RateLimit>,
}

/// An in-kernel forwarding entry (the fast path of a spliced leg): what passes a pinhole is
/// sent back out of the receiving interface from `via` to `to`, without reaching the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardSpec {
    /// The spliced leg's local address and port: the forwarded packets' source.
    pub via: SocketAddr,
    /// The spliced leg's remote: the forwarded packets' destination.
    pub to: SocketAddr,
    /// DSCP of the forwarded packets (the spliced leg's marking); `None` keeps the packet's.
    pub dscp: Option<Dscp>,
    /// RTP clock rate of the media (for the jitter of what the kernel forwards); 0: no jitter.
    pub clock_rate: u32,
    /// Check the RTP padding count before forwarding (plain RTP; SRTP encrypts it).
    pub check_padding: bool,
}

impl ForwardSpec {
    /// The map value, or a precise reason why the kernel could not use it.
    pub fn to_map(&self) -> Result<rtpedge_common::Forward, DataplaneError> {
        if self.via.is_ipv4() != self.to.is_ipv4() {
            return Err(DataplaneError::Invalid(format!(
                "forwarding from {} to {}: the fast path never changes the address family",
                self.via, self.to
            )));
        }
        if self.via.port() == 0 || self.to.port() == 0 || self.to.ip().is_unspecified() {
            return Err(DataplaneError::Invalid(format!(
                "forwarding from {} to {}: needs a concrete source port and destination",
                self.via, self.to
            )));
        }
        Ok(rtpedge_common::Forward {
            src_addr: addr_to_map(self.via.ip()),
            dst_addr: addr_to_map(self.to.ip()),
            src_port: self.via.port(),
            dst_port: self.to.port(),
            dscp: self.dscp.map_or(rtpedge_common::DSCP_NONE, Dscp::value),
            flags: if self.check_padding {
                rtpedge_common::forward::FORWARD_CHECK_PADDING
            } else {
                0
            },
            _pad: [0; 2],
        })
    }

    /// Reads a map value back, with the clock rate kept beside it.
    pub fn from_map(f: &rtpedge_common::Forward, clock_rate: u32) -> Self {
        Self {
            via: SocketAddr::new(addr_from_map(f.src_addr), f.src_port),
            to: SocketAddr::new(addr_from_map(f.dst_addr), f.dst_port),
            dscp: Dscp::new(f.dscp).ok(),
            clock_rate,
            check_padding: f.flags & rtpedge_common::forward::FORWARD_CHECK_PADDING != 0,
        }
    }
}

/// Whether a pinhole currently admits media.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinholeState {
    /// Media satisfying the policy passes.
    Open,
    /// Kept with its counters, but nothing passes.
    Closed,
}

impl PinholeState {
    /// `"open"` or `"closed"`.
    pub const fn name(self) -> &'static str {
        match self {
            PinholeState::Open => "open",
            PinholeState::Closed => "closed",
        }
    }
}

/// Counters of one pinhole, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinholeCounters {
    /// Packets passed.
    pub packets: u64,
    /// Bytes passed (Ethernet frames).
    pub bytes: u64,
    /// Dropped: pinhole closed.
    pub dropped_closed: u64,
    /// Dropped: wrong source.
    pub dropped_wrong_source: u64,
    /// Dropped: rate limit.
    pub dropped_rate_limited: u64,
    /// Packets the host sent from this pinhole's address and port.
    pub tx_packets: u64,
    /// Bytes the host sent from it.
    pub tx_bytes: u64,
    /// Passed packets the fast path forwarded in the kernel (included in `packets`).
    pub forwarded_packets: u64,
    /// Their bytes (frames as received).
    pub forwarded_bytes: u64,
    /// Time since the last passed packet, if any has passed.
    pub idle: Option<Duration>,
}

impl PinholeCounters {
    /// All drops of this pinhole.
    pub fn dropped(&self) -> u64 {
        self.dropped_closed + self.dropped_wrong_source + self.dropped_rate_limited
    }
}

/// A pinhole as read back from the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinholeInfo {
    /// Local address and port.
    pub local: SocketAddr,
    /// The policy as configured.
    pub policy: RemotePolicy,
    /// The source latched by a learning pinhole.
    pub learned: Option<SocketAddr>,
    /// Open or closed.
    pub state: PinholeState,
    /// DSCP marking.
    pub dscp: Option<Dscp>,
    /// Rate limit.
    pub rate: Option<RateLimit>,
    /// Counters.
    pub counters: PinholeCounters,
}

impl PinholeInfo {
    /// The remote as an operator wants to see it: the learned source if there is one, otherwise
    /// what was set (`ip:port`, `ip`, or `*` for learning from anywhere).
    pub fn remote_display(&self) -> String {
        if let Some(l) = self.learned {
            return l.to_string();
        }
        match self.policy {
            RemotePolicy::Exact(a) => a.to_string(),
            RemotePolicy::Address(ip) => ip.to_string(),
            RemotePolicy::Learning { from: Some(ip), .. } => ip.to_string(),
            RemotePolicy::Learning { from: None, .. } | RemotePolicy::Any => "*".to_string(),
        }
    }
}

/// The global per-verdict counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounters(pub [u64; Counter::COUNT as usize]);

impl GlobalCounters {
    /// One counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
    /// `(name, value)` pairs in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(move |c| (c.name(), self.get(*c)))
    }
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl FromStr for AttachMode {
    type Err = DataplaneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "native" | "driver" | "drv" => Ok(AttachMode::Native),
            "generic" | "skb" => Ok(AttachMode::Generic),
            _ => Err(DataplaneError::Invalid(format!(
                "mode {s:?}: expected native, generic or auto"
            ))),
        }
    }
}

/// Parses `LO-HI` into an inclusive port range.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), DataplaneError> {
    let bad = || {
        DataplaneError::Invalid(format!(
            "port range {s:?}: expected LO-HI, e.g. 30000-40000"
        ))
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(DataplaneError::Invalid(format!(
            "port range {s:?}: need 0 < LO <= HI"
        )));
    }
    Ok((lo, hi))
}

/// The 16-byte map form of an address (IPv4 as IPv4-mapped IPv6).
pub fn addr_to_map(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => logic::ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte map form stands for (IPv4-mapped becomes IPv4).
pub fn addr_from_map(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The map key of a local address and port.
pub fn key_of(local: SocketAddr) -> Result<PinholeKey, DataplaneError> {
    if local.port() == 0 {
        return Err(DataplaneError::Invalid(format!("local {local}: port 0")));
    }
    if local.ip().is_unspecified() {
        return Err(DataplaneError::Invalid(format!(
            "local {local}: a pinhole needs the concrete local address media arrives on"
        )));
    }
    Ok(PinholeKey {
        addr: addr_to_map(local.ip()),
        port: local.port(),
        _pad: 0,
    })
}

/// The local address a key stands for.
pub fn local_of(key: &PinholeKey) -> SocketAddr {
    SocketAddr::new(addr_from_map(key.addr), key.port)
}

/// Builds the map value for a spec. `now_ns` is the monotonic clock (for the learning deadline).
pub fn pinhole_value(
    spec: &PinholeSpec,
    open: bool,
    now_ns: u64,
) -> Result<Pinhole, DataplaneError> {
    let family_ok = |ip: IpAddr| ip.is_ipv4() == spec.local.is_ipv4();
    let (remote_addr, remote_port, pol, deadline) = match spec.remote {
        RemotePolicy::Exact(r) => {
            if r.port() == 0 || r.ip().is_unspecified() {
                return Err(DataplaneError::Invalid(format!(
                    "exact policy needs a concrete remote address and port, got {r}"
                )));
            }
            if !family_ok(r.ip()) {
                return Err(DataplaneError::Invalid(format!(
                    "remote {r} and local {} are of different address families",
                    spec.local
                )));
            }
            (addr_to_map(r.ip()), r.port(), policy::EXACT, 0)
        }
        RemotePolicy::Address(ip) => {
            if ip.is_unspecified() {
                return Err(DataplaneError::Invalid(
                    "address policy needs a concrete remote address (use learning for any)".into(),
                ));
            }
            if !family_ok(ip) {
                return Err(DataplaneError::Invalid(format!(
                    "remote {ip} and local {} are of different address families",
                    spec.local
                )));
            }
            (addr_to_map(ip), 0, policy::ADDRESS, 0)
        }
        RemotePolicy::Learning { from, window } => {
            let addr = match from {
                Some(ip) if !ip.is_unspecified() => {
                    if !family_ok(ip) {
                        return Err(DataplaneError::Invalid(format!(
                            "remote {ip} and local {} are of different address families",
                            spec.local
                        )));
                    }
                    addr_to_map(ip)
                }
                _ => [0; 16],
            };
            let deadline = match window {
                None => 0,
                Some(w) => now_ns
                    .saturating_add(w.as_nanos().min(u64::MAX as u128) as u64)
                    .max(1),
            };
            (addr, 0, policy::LEARNING, deadline)
        }
        RemotePolicy::Any => ([0; 16], 0, policy::ANY, 0),
    };
    Ok(Pinhole {
        remote_addr,
        remote_port,
        policy: pol,
        state: if open { state::OPEN } else { state::CLOSED },
        dscp: spec.dscp.map_or(DSCP_NONE, Dscp::value),
        _pad: [0; 3],
        rate_pps: spec.rate.map_or(0, |r| r.pps),
        burst: spec.rate.map_or(0, |r| r.burst),
        learn_deadline_ns: deadline,
    })
}

/// Reads a map value back into the typed policy (the learning window is reported as what is
/// left of it at `now_ns`).
pub fn policy_of(ph: &Pinhole, now_ns: u64) -> RemotePolicy {
    let ip = addr_from_map(ph.remote_addr);
    match ph.policy {
        policy::EXACT => RemotePolicy::Exact(SocketAddr::new(ip, ph.remote_port)),
        policy::ADDRESS => RemotePolicy::Address(ip),
        policy::ANY => RemotePolicy::Any,
        _ => RemotePolicy::Learning {
            from: (!logic::addr_is_unspecified(&ph.remote_addr)).then_some(ip),
            window: (ph.learn_deadline_ns != 0)
                .then(|| Duration::from_nanos(ph.learn_deadline_ns.saturating_sub(now_ns))),
        },
    }
}

/// Builds the typed info of a pinhole from its map entries.
pub fn info_of(
    key: &PinholeKey,
    ph: &Pinhole,
    learned: Option<SocketAddr>,
    counters: PinholeCounters,
    now_ns: u64,
) -> PinholeInfo {
    PinholeInfo {
        local: local_of(key),
        policy: policy_of(ph, now_ns),
        learned,
        state: if ph.state == state::OPEN {
            PinholeState::Open
        } else {
            PinholeState::Closed
        },
        dscp: (ph.dscp != DSCP_NONE).then_some(Dscp(ph.dscp & DSCP_MAX)),
        rate: (ph.rate_pps != 0).then_some(RateLimit {
            pps: ph.rate_pps,
            burst: ph.burst.max(1),
        }),
        counters,
    }
}

/// Parses the operator form of a remote for a policy: `IP:PORT` for exact, `IP` (or `IP:PORT`,
/// port ignored) for address, and for learning `IP`, `*`, `0.0.0.0` or `::` (any).
pub fn parse_remote(
    policy: &str,
    remote: &str,
    window: Option<Duration>,
) -> Result<RemotePolicy, DataplaneError> {
    let as_sock = remote.parse::<SocketAddr>().ok();
    let as_ip = remote
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    match policy {
        "exact" => as_sock.map(RemotePolicy::Exact).ok_or_else(|| {
            DataplaneError::Invalid(format!("remote {remote:?}: exact policy needs IP:PORT"))
        }),
        "address" => as_ip
            .or(as_sock.map(|s| s.ip()))
            .map(RemotePolicy::Address)
            .ok_or_else(|| {
                DataplaneError::Invalid(format!("remote {remote:?}: not an IP address"))
            }),
        "learning" => {
            let from = if remote == "*" || remote.is_empty() {
                None
            } else {
                let ip = as_ip.or(as_sock.map(|s| s.ip())).ok_or_else(|| {
                    DataplaneError::Invalid(format!("remote {remote:?}: expected IP or *"))
                })?;
                (!ip.is_unspecified()).then_some(ip)
            };
            Ok(RemotePolicy::Learning { from, window })
        }
        "any" => Ok(RemotePolicy::Any),
        other => Err(DataplaneError::Invalid(format!(
            "policy {other:?}: expected exact, address, learning or any"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rate_and_range() {
        assert_eq!(
            "100/20".parse::<RateLimit>().unwrap(),
            RateLimit {
                pps: 100,
                burst: 20
            }
        );
        assert!("100".parse::<RateLimit>().is_err());
        assert!("0/5".parse::<RateLimit>().is_err());
        assert!("x/5".parse::<RateLimit>().is_err());
        assert_eq!(parse_port_range("30000-40000").unwrap(), (30000, 40000));
        assert!(parse_port_range("40000-30000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("1-70000").is_err());
    }

    #[test]
    fn dscp_bounds() {
        assert!(Dscp::new(63).is_ok());
        assert!(Dscp::new(64).is_err());
    }

    #[test]
    fn pinhole_round_trip_every_policy() {
        let local: SocketAddr = "10.0.0.1:30000".parse().unwrap();
        for remote in [
            RemotePolicy::Exact("10.0.0.2:4000".parse().unwrap()),
            RemotePolicy::Address("10.0.0.2".parse().unwrap()),
            RemotePolicy::Learning {
                from: None,
                window: None,
            },
            RemotePolicy::Learning {
                from: Some("10.0.0.2".parse().unwrap()),
                window: None,
            },
        ] {
            let spec = PinholeSpec {
                local,
                remote,
                dscp: Some(Dscp::EF),
                rate: Some(RateLimit { pps: 50, burst: 10 }),
            };
            let v = pinhole_value(&spec, true, 1000).unwrap();
            let key = key_of(local).unwrap();
            let info = info_of(&key, &v, None, PinholeCounters::default(), 1000);
            assert_eq!(info.local, local);
            assert_eq!(info.policy, remote);
            assert_eq!(info.dscp, Some(Dscp::EF));
            assert_eq!(info.rate, spec.rate);
            assert_eq!(info.state, PinholeState::Open);
        }
    }

    #[test]
    fn learning_window_becomes_deadline() {
        let spec = PinholeSpec {
            local: "[2001:db8::1]:30002".parse().unwrap(),
            remote: RemotePolicy::Learning {
                from: None,
                window: Some(Duration::from_secs(3)),
            },
            dscp: None,
            rate: None,
        };
        let v = pinhole_value(&spec, true, 5).unwrap();
        assert_eq!(v.learn_deadline_ns, 3_000_000_005);
        assert_eq!(v.dscp, DSCP_NONE);
    }

    #[test]
    fn invalid_specs_are_refused_with_reasons() {
        let local: SocketAddr = "10.0.0.1:30000".parse().unwrap();
        let mk = |remote| PinholeSpec {
            local,
            remote,
            dscp: None,
            rate: None,
        };
        let e = pinhole_value(
            &mk(RemotePolicy::Exact("10.0.0.2:0".parse().unwrap())),
            true,
            0,
        );
        assert!(e.unwrap_err().to_string().contains("concrete remote"));
        let e = pinhole_value(
            &mk(RemotePolicy::Exact("[::2]:5".parse().unwrap())),
            true,
            0,
        );
        assert!(e.unwrap_err().to_string().contains("families"));
        let e = pinhole_value(
            &mk(RemotePolicy::Address("0.0.0.0".parse().unwrap())),
            true,
            0,
        );
        assert!(e.is_err());
        assert!(key_of("0.0.0.0:30000".parse().unwrap()).is_err());
        assert!(key_of("10.0.0.1:0".parse().unwrap()).is_err());
    }

    #[test]
    fn parse_operator_remotes() {
        assert_eq!(
            parse_remote("exact", "10.0.0.2:4000", None).unwrap(),
            RemotePolicy::Exact("10.0.0.2:4000".parse().unwrap())
        );
        assert!(parse_remote("exact", "10.0.0.2", None).is_err());
        assert_eq!(
            parse_remote("address", "[2001:db8::2]", None).unwrap(),
            RemotePolicy::Address("2001:db8::2".parse().unwrap())
        );
        assert_eq!(
            parse_remote("learning", "0.0.0.0", None).unwrap(),
            RemotePolicy::Learning {
                from: None,
                window: None
            }
        );
        assert!(parse_remote("bogus", "1.2.3.4", None).is_err());
    }

    #[test]
    fn map_addresses_round_trip() {
        for s in ["10.1.2.3", "2001:db8::7", "::1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(addr_from_map(addr_to_map(ip)), ip);
        }
    }
}
