//! The owner's handle on the bridge: provisions legs (binds their sockets from the port pool),
//! sets remotes and DSCP, splices and unsplices, reports statistics and events. It runs on the
//! owner's threads (the control path); the packet path is entirely in the workers.
//!
//! Commands that cannot fail once the handle has checked them against its own view of legs and
//! splices (adding and removing legs, remotes, media timeouts, splice, unsplice) are *posted*:
//! queued for the worker in order, without waiting. A worker applies its queue before it reads
//! any socket, so a splice is in effect for every packet that arrives after it was posted. The
//! owner calls [`Bridge::flush`] before acknowledging a request: it waits for a worker only
//! when something posted must stop forwarding (unsplice, removing a spliced leg, a new remote
//! on a spliced leg), so that no packet the worker has already read is forwarded after the
//! flush; other commands wait in the queue for the next wake-up (packets, a flush that waits,
//! the worker's tick). Queries (statistics, floor) are round trips and see everything posted
//! before them. With `BridgeConfig::batch_wakes` off (the default), every method flushes and
//! wakes the worker before it returns, so a user that never calls `flush` sees each change in
//! effect when the method returns.
//!
//! The legs of a splice must live on one worker (so that forwarding between them needs no lock
//! and no cross-thread state): `provision` can place a leg near another, and `splice` moves legs
//! onto the first leg's worker when needed (their packets wait in the socket buffers meanwhile).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;
use socket2::{Domain, Protocol, Socket as RawSocket, Type};

use crate::{
    core::{BridgeEvent, CoreError, Fork, LegOptions, LegStats},
    pool::{PoolError, PortPool},
    reserve::{self, Buffers, Reserve},
    types::{LegId, RemoteSpec, SpliceId, SpliceMode},
    worker::{self, Command, LegSockets, StatsCell, WorkerHandle},
};

/// Commands that stop no forwarding (a leg added, a splice, a remote or timeout of an
/// unspliced leg, an unspliced leg removed) wait in the queue for the next wake-up (a packet,
/// a flush that must wait, the worker's tick, at most 100 ms) until this many are queued: a
/// worker woken per request costs a context switch each on a busy core.
const LAZY_BACKLOG: usize = 256;

/// Bridge configuration.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// Local addresses legs can be bound on (IPv4 and/or IPv6); the first of a family is that
    /// family's default.
    pub addresses: Vec<IpAddr>,
    /// Media port range (inclusive); RTP ports are the even ones.
    pub port_min: u16,
    /// Last port of the range.
    pub port_max: u16,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// How long a released port pair rests before it is handed out again.
    pub quarantine: Duration,
    /// Default media timeout of spliced legs (0: none).
    pub media_timeout: Duration,
    /// Datagrams per recvmmsg/sendmmsg batch.
    pub batch: usize,
    /// Default RTP clock rate for jitter (8000 for narrowband audio).
    pub clock_rate: u32,
    /// SO_RCVBUF / SO_SNDBUF of leg sockets (0: system default).
    pub socket_buffer: usize,
    /// Wake workers only in [`Bridge::flush`] (one wake-up, and at most one wait, per batch of
    /// commands) instead of flushing in every method. For owners that flush before they
    /// acknowledge anything.
    pub batch_wakes: bool,
    /// Bound port pairs kept ready per address by [`Bridge::replenish`], so that provisioning
    /// a leg binds nothing (0: bind on demand only).
    pub reserve: usize,
    /// Most idle bound pairs held in all (ready, and released ones resting out the
    /// quarantine, which are reused instead of closed); beyond, released pairs are closed.
    pub reserve_max: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            addresses: vec![IpAddr::from([127, 0, 0, 1])],
            port_min: 30000,
            port_max: 40000,
            workers: 0,
            quarantine: Duration::from_secs(10),
            media_timeout: Duration::from_secs(30),
            batch: 32,
            clock_rate: 8000,
            socket_buffer: 1 << 20,
            batch_wakes: false,
            reserve: 256,
            reserve_max: 4096,
        }
    }
}

/// Errors of the bridge API.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No port pair is free.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The requested local address is not configured.
    #[error("local address {0} is not configured for media")]
    NoSuchAddress(IpAddr),
    /// No address of the requested family is configured.
    #[error("no {0} media address configured")]
    NoAddressOfFamily(&'static str),
    /// Binding failed for every candidate port.
    #[error("cannot bind a media port on {addr}: {source}")]
    Bind {
        /// Address.
        addr: IpAddr,
        /// Last bind error.
        source: std::io::Error,
    },
    /// A leg or splice operation was refused.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// No such leg.
    #[error("no such leg: {0}")]
    NoSuchLeg(LegId),
    /// No such splice.
    #[error("no such splice: {0}")]
    NoSuchSplice(SpliceId),
    /// A worker thread is gone (bug or shutdown).
    #[error("bridge worker unavailable")]
    WorkerGone,
    /// Socket option or other I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was done.
        context: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Invalid configuration.
    #[error("invalid bridge configuration: {0}")]
    Config(String),
}

/// What to provision.
#[derive(Clone, Copy, Debug, Default)]
pub struct LegRequest {
    /// Local address to bind (default: the first configured IPv4 address, else IPv6).
    pub address: Option<IpAddr>,
    /// Want an IPv6 leg (when `address` is not given).
    pub ipv6: bool,
    /// One port for RTP and RTCP (RFC 5761).
    pub rtcp_mux: bool,
    /// The leg carries SRTP (validated leniently; relayed end to end).
    pub srtp: bool,
    /// Place the leg on the same worker as this one (the other leg of its call).
    pub near: Option<LegId>,
}

/// A provisioned leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegInfo {
    /// Its id.
    pub id: LegId,
    /// Local RTP address (and RTCP with rtcp-mux).
    pub rtp: SocketAddr,
    /// Local RTCP address (RTP port + 1), unless rtcp-mux.
    pub rtcp: Option<SocketAddr>,
}

struct LegEntry {
    worker: usize,
    sockets: Arc<LegSockets>,
    info: LegInfo,
    /// The splice it is in (the handle's view, kept in step with the worker's).
    splice: Option<SpliceId>,
    /// Statistics as of leaving a splice, once the worker has left them there.
    snapshot: StatsCell,
    /// The splice it left last (by unsplice): the snapshot that counts.
    left: Option<SpliceId>,
    /// A DSCP was set on its sockets (cleared before they are reused).
    dscp_set: bool,
}

struct SpliceEntry {
    worker: usize,
    legs: Vec<LegId>,
}

/// A released leg whose sockets the worker may still hold: its ports return to the pool once
/// the handle holds the last reference (the worker has closed its side).
struct Releasing {
    ip: IpAddr,
    port: u16,
    sockets: Arc<LegSockets>,
    dscp_set: bool,
}

struct Control {
    pools: HashMap<IpAddr, PortPool>,
    legs: HashMap<LegId, LegEntry>,
    splices: HashMap<SpliceId, SpliceEntry>,
    load: Vec<usize>,
    next_leg: u64,
    next_splice: u64,
    /// Per worker: commands posted since its last wake-up.
    posted: Vec<bool>,
    /// Per worker: commands posted since its last wake-up.
    backlog: Vec<usize>,
    /// Per worker: a posted command stops forwarding; `flush` waits for it.
    must_sync: Vec<bool>,
    next_barrier: u64,
    releasing: Vec<Releasing>,
    reserve: Reserve,
}

/// The running bridge.
pub struct Bridge {
    control: Mutex<Control>,
    workers: Vec<WorkerHandle>,
    events: Receiver<BridgeEvent>,
    addresses: Vec<IpAddr>,
    epoch: Instant,
    cfg: BridgeConfig,
    /// A fresh socket's SO_RCVBUF, restored on an RTCP socket taken from the reserve.
    default_rcvbuf: usize,
}

impl Bridge {
    /// Starts the workers.
    pub fn start(cfg: BridgeConfig) -> Result<Self, BridgeError> {
        if cfg.addresses.is_empty() {
            return Err(BridgeError::Config("no media address".into()));
        }
        let mut pools = HashMap::new();
        for &a in &cfg.addresses {
            pools.insert(
                a,
                PortPool::new(cfg.port_min, cfg.port_max, cfg.quarantine)?,
            );
        }
        let n = if cfg.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.workers
        };
        let epoch = Instant::now();
        let default_rcvbuf = default_rcvbuf().map_err(|source| BridgeError::Io {
            context: "probing the default socket buffer",
            source,
        })?;
        let quarantine_ns = cfg.quarantine.as_nanos().min(u64::MAX as u128) as u64;
        let (events_tx, events) = crossbeam_channel::unbounded();
        let workers = (0..n)
            .map(|i| {
                worker::spawn(
                    i,
                    cfg.batch.max(1),
                    cfg.clock_rate,
                    epoch,
                    events_tx.clone(),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BridgeError::Io {
                context: "starting workers",
                source,
            })?;
        Ok(Self {
            control: Mutex::new(Control {
                pools,
                legs: HashMap::new(),
                splices: HashMap::new(),
                load: vec![0; n],
                next_leg: 1,
                next_splice: 1,
                posted: vec![false; n],
                must_sync: vec![false; n],
                backlog: vec![0; n],
                next_barrier: 1,
                releasing: Vec::new(),
                reserve: Reserve::new(quarantine_ns, cfg.reserve_max),
            }),
            workers,
            events,
            addresses: cfg.addresses.clone(),
            epoch,
            cfg,
            default_rcvbuf,
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call<T>(
        &self,
        worker: usize,
        make: impl FnOnce(crossbeam_channel::Sender<Result<T, CoreError>>) -> Command,
    ) -> Result<T, BridgeError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let w = self.workers.get(worker).ok_or(BridgeError::WorkerGone)?;
        if !w.send(make(tx)) {
            return Err(BridgeError::WorkerGone);
        }
        Ok(rx.recv().map_err(|_| BridgeError::WorkerGone)??)
    }

    /// Queues a command for a worker without waiting; `sync`: it stops forwarding, so the
    /// next [`Bridge::flush`] waits until the worker has applied it.
    fn post(
        &self,
        c: &mut Control,
        worker: usize,
        cmd: Command,
        sync: bool,
    ) -> Result<(), BridgeError> {
        let w = self.workers.get(worker).ok_or(BridgeError::WorkerGone)?;
        if !w.post(cmd) {
            return Err(BridgeError::WorkerGone);
        }
        c.posted[worker] = true;
        c.backlog[worker] += 1;
        c.must_sync[worker] |= sync;
        if !self.cfg.batch_wakes {
            // Unbatched: in effect when the method returns, as a direct caller expects.
            self.flush_locked(c)?;
        }
        Ok(())
    }

    /// Puts in effect everything posted so far that stops forwarding: wakes each worker with
    /// such a command queued and waits for it (once, however many are queued). When this
    /// returns, no splice dissolved, leg released or remote replaced before forwards another
    /// packet, not even one the worker had already read. Splices posted before are in effect
    /// for every packet that arrives after they were posted (the worker applies its queue
    /// before reading); the rest is applied at the worker's next wake-up, or within its tick
    /// (100 ms). Failures of posted commands (which the handle's own checks make unexpected)
    /// are logged and the first is returned.
    pub fn flush(&self) -> Result<(), BridgeError> {
        let mut c = self.control();
        self.flush_locked(&mut c)
    }

    fn flush_locked(&self, c: &mut Control) -> Result<(), BridgeError> {
        let mut result = Ok(());
        for (i, w) in self.workers.iter().enumerate() {
            if c.must_sync[i] {
                let seq = c.next_barrier;
                c.next_barrier += 1;
                if !w.post(Command::Barrier { seq }) {
                    result = Err(BridgeError::WorkerGone);
                    continue;
                }
                w.wake();
                c.posted[i] = false;
                c.backlog[i] = 0;
                c.must_sync[i] = false;
                match w.wait_barrier(seq) {
                    Some(failures) => {
                        for f in &failures {
                            tracing::error!(worker = i, error = %f, "posted bridge command failed");
                        }
                        if let (Some(f), Ok(())) = (failures.into_iter().next(), &result) {
                            result = Err(BridgeError::Core(f));
                        }
                    }
                    None => result = Err(BridgeError::WorkerGone),
                }
            } else if c.posted[i] && (c.backlog[i] >= LAZY_BACKLOG || !self.cfg.batch_wakes) {
                w.wake();
                c.posted[i] = false;
                c.backlog[i] = 0;
            }
        }
        self.reap(c);
        result
    }

    /// Returns the ports of released legs whose sockets the workers have let go of.
    fn reap(&self, c: &mut Control) {
        if c.releasing.is_empty() {
            return;
        }
        let now = self.now_ns();
        let Control {
            releasing,
            pools,
            reserve,
            ..
        } = c;
        for r in releasing.extract_if(.., |r| Arc::strong_count(&r.sockets) == 1) {
            // The worker has let go: the handle holds the only reference.
            let Ok(sockets) = Arc::try_unwrap(r.sockets) else {
                if let Some(p) = pools.get_mut(&r.ip) {
                    p.release(r.port, now);
                }
                continue;
            };
            // Kept bound for reuse after the quarantine while the reserve has room; else
            // closed here and the port rests in the pool.
            let kept = reserve.has_room()
                && match reserve::park(&sockets, r.ip.is_ipv6(), r.dscp_set) {
                    Ok(()) => reserve.add_released(r.ip, r.port, sockets, now).is_ok(),
                    Err(e) => {
                        tracing::warn!(ip = %r.ip, port = r.port, error = %e, "parking a released leg's sockets");
                        false
                    }
                };
            if !kept && let Some(p) = pools.get_mut(&r.ip) {
                p.release(r.port, now);
            }
        }
    }

    /// Events from the workers (first packet, latched, media timeout, errors).
    pub fn events(&self) -> &Receiver<BridgeEvent> {
        &self.events
    }

    /// Number of worker threads.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Binds a leg's sockets; `parked`: for the reserve, with minimal receive buffers.
    fn bind_pair(
        &self,
        ip: IpAddr,
        port: u16,
        rtcp_mux: bool,
        parked: bool,
    ) -> std::io::Result<LegSockets> {
        let rtp = self.bind_socket(ip, port, true, parked)?;
        let rtcp = if rtcp_mux {
            None
        } else {
            Some(self.bind_socket(ip, port + 1, false, parked)?)
        };
        Ok(LegSockets { rtp, rtcp })
    }

    /// Binds one media socket, non-blocking from creation (no fcntl round trips). RTCP (about
    /// one packet in a hundred) keeps the system's default buffers: only RTP sockets
    /// (`big_buffers`) get big ones.
    fn bind_socket(
        &self,
        ip: IpAddr,
        port: u16,
        big_buffers: bool,
        parked: bool,
    ) -> std::io::Result<UdpSocket> {
        let s = RawSocket::new(
            Domain::for_address(SocketAddr::new(ip, port)),
            Type::DGRAM.nonblocking(),
            Some(Protocol::UDP),
        )?;
        if ip.is_ipv6() {
            s.set_only_v6(true)?;
        }
        if big_buffers && self.cfg.socket_buffer > 0 {
            if !parked {
                let _ = s.set_recv_buffer_size(self.cfg.socket_buffer);
            }
            let _ = s.set_send_buffer_size(self.cfg.socket_buffer);
        }
        if parked {
            s.set_recv_buffer_size(0)?;
        }
        s.bind(&SocketAddr::new(ip, port).into())?;
        Ok(s.into())
    }

    /// Provisions a leg: binds its ports and hands it to a worker. Media arriving before the
    /// leg is spliced is dropped and counted.
    pub fn provision(&self, req: LegRequest) -> Result<LegInfo, BridgeError> {
        let ip = match req.address {
            Some(a) if self.addresses.contains(&a) => a,
            Some(a) => return Err(BridgeError::NoSuchAddress(a)),
            None => *self
                .addresses
                .iter()
                .find(|a| a.is_ipv6() == req.ipv6)
                .ok_or(BridgeError::NoAddressOfFamily(if req.ipv6 {
                    "IPv6"
                } else {
                    "IPv4"
                }))?,
        };
        let mut c = self.control();
        self.reap(&mut c);
        let mut last_err = None;
        let mut bound = self.take_reserved(&mut c, ip, req.rtcp_mux);
        // A port another process holds is skipped (and rests in quarantine); try a few.
        for _ in 0..16 {
            if bound.is_some() {
                break;
            }
            let now = self.now_ns();
            let pool = c.pools.get_mut(&ip).ok_or(BridgeError::NoSuchAddress(ip))?;
            let port = match pool.allocate(now) {
                Ok(p) => p,
                Err(e) if !c.releasing.is_empty() => {
                    // Released legs whose sockets a worker has not closed yet: let it catch
                    // up, then their ports (or their sockets, kept in the reserve) count again.
                    c.must_sync.iter_mut().for_each(|s| *s = true);
                    self.flush_locked(&mut c)?;
                    bound = self.take_reserved(&mut c, ip, req.rtcp_mux);
                    if bound.is_some() {
                        break;
                    }
                    let pool = c.pools.get_mut(&ip).ok_or(BridgeError::NoSuchAddress(ip))?;
                    pool.allocate(self.now_ns())
                        .map_err(|_| Self::pool_error(&c, ip, e))?
                }
                Err(e) => return Err(Self::pool_error(&c, ip, e)),
            };
            let pool = c.pools.get_mut(&ip).ok_or(BridgeError::NoSuchAddress(ip))?;
            match self.bind_pair(ip, port, req.rtcp_mux, false) {
                Ok(s) => {
                    bound = Some((port, s));
                    break;
                }
                Err(e) => {
                    tracing::warn!(%ip, port, error = %e, "media port busy, skipping");
                    pool.release(port, now);
                    last_err = Some(e);
                }
            }
        }
        let Some((port, sockets)) = bound else {
            return Err(BridgeError::Bind {
                addr: ip,
                source: last_err.unwrap_or_else(|| std::io::Error::other("no port bound")),
            });
        };
        let worker = match req.near.and_then(|n| c.legs.get(&n)) {
            Some(e) => e.worker,
            None => c
                .load
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| **l)
                .map_or(0, |(i, _)| i),
        };
        let id = LegId(c.next_leg);
        c.next_leg += 1;
        let info = LegInfo {
            id,
            rtp: SocketAddr::new(ip, port),
            rtcp: (!req.rtcp_mux).then(|| SocketAddr::new(ip, port + 1)),
        };
        let sockets = Arc::new(sockets);
        let opts = LegOptions {
            rtcp_mux: req.rtcp_mux,
            srtp: req.srtp,
            media_timeout: self.cfg.media_timeout,
        };
        let posted = self.post(
            &mut c,
            worker,
            Command::AddLeg {
                id,
                sockets: Arc::clone(&sockets),
                opts,
            },
            false,
        );
        if let Err(e) = posted {
            if let Some(p) = c.pools.get_mut(&ip) {
                p.release(port, self.now_ns());
            }
            return Err(e);
        }
        c.load[worker] += 1;
        c.legs.insert(
            id,
            LegEntry {
                worker,
                sockets,
                info,
                splice: None,
                snapshot: StatsCell::default(),
                left: None,
                dscp_set: false,
            },
        );
        Ok(info)
    }

    /// A pair from the reserve, unparked and shaped for the request (the RTCP socket closed
    /// for rtcp-mux, bound when a muxed pair must now carry RTCP apart).
    fn take_reserved(
        &self,
        c: &mut Control,
        ip: IpAddr,
        rtcp_mux: bool,
    ) -> Option<(u16, LegSockets)> {
        loop {
            let (port, mut sockets) = c.reserve.take(ip, self.now_ns())?;
            let buffers = Buffers {
                rtp: self.cfg.socket_buffer,
                rtcp: self.default_rcvbuf,
            };
            let shaped = reserve::unpark(&sockets, buffers).and_then(|discarded| {
                if discarded > 0 {
                    tracing::debug!(%ip, port, discarded, "datagrams that reached an idle media port");
                }
                match (rtcp_mux, sockets.rtcp.is_some()) {
                    (true, true) => sockets.rtcp = None,
                    (false, false) => {
                        sockets.rtcp = Some(self.bind_socket(ip, port + 1, false, false)?);
                    }
                    _ => {}
                }
                Ok(())
            });
            match shaped {
                Ok(()) => return Some((port, sockets)),
                Err(e) => {
                    // Closed; the port rests in the pool. The next pair, or a fresh bind.
                    tracing::warn!(%ip, port, error = %e, "reusing a reserved media port pair");
                    drop(sockets);
                    let now = self.now_ns();
                    if let Some(p) = c.pools.get_mut(&ip) {
                        p.release(port, now);
                    }
                }
            }
        }
    }

    /// The pool's refusal, counting the reserve's idle pairs as what they are: free or
    /// resting, not in use.
    fn pool_error(c: &Control, ip: IpAddr, e: PoolError) -> BridgeError {
        match e {
            PoolError::NoFreePorts {
                in_use,
                quarantined,
            } => {
                let resting = c.reserve.resting(ip);
                let idle = c.reserve.ready(ip) + resting;
                BridgeError::Pool(PoolError::NoFreePorts {
                    in_use: in_use.saturating_sub(idle),
                    quarantined: quarantined + resting,
                })
            }
            e => BridgeError::Pool(e),
        }
    }

    /// Binds up to `budget` port pairs into the reserve, toward [`BridgeConfig::reserve`] per
    /// address, and returns how many are still missing. For idle moments: it makes the next
    /// provisions bind nothing.
    pub fn replenish(&self, budget: usize) -> usize {
        let mut c = self.control();
        self.reap(&mut c);
        let mut budget = budget;
        let mut missing = 0;
        for &ip in &self.addresses {
            let now = self.now_ns();
            // Pairs at the end of their quarantine count as ready.
            let want = self
                .cfg
                .reserve
                .saturating_sub(c.reserve.ready(ip) + c.reserve.resting(ip));
            let mut added = 0;
            while added < want && budget > 0 && c.reserve.has_room() {
                let Some(pool) = c.pools.get_mut(&ip) else {
                    break;
                };
                let Ok(port) = pool.allocate(now) else {
                    break;
                };
                budget -= 1;
                match self.bind_pair(ip, port, false, true) {
                    Ok(sockets) => {
                        if let Err(sockets) = c.reserve.add_ready(ip, port, sockets) {
                            drop(sockets);
                            if let Some(p) = c.pools.get_mut(&ip) {
                                p.release(port, now);
                            }
                            break;
                        }
                        added += 1;
                    }
                    Err(e) => {
                        tracing::debug!(%ip, port, error = %e, "media port busy, not reserved");
                        if let Some(p) = c.pools.get_mut(&ip) {
                            p.release(port, now);
                        }
                    }
                }
            }
            missing += want - added;
        }
        missing
    }

    /// Idle bound pairs held (ready and resting).
    pub fn reserved(&self) -> usize {
        self.control().reserve.held()
    }

    fn worker_of(&self, leg: LegId) -> Result<usize, BridgeError> {
        self.control()
            .legs
            .get(&leg)
            .map(|e| e.worker)
            .ok_or(BridgeError::NoSuchLeg(leg))
    }

    /// Sets (or, on re-INVITE, replaces) a leg's remote. Posted; on a spliced leg the next
    /// [`Bridge::flush`] waits for it.
    pub fn set_remote(&self, leg: LegId, spec: RemoteSpec) -> Result<(), BridgeError> {
        let mut c = self.control();
        let e = c.legs.get(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
        let (w, spliced) = (e.worker, e.splice.is_some());
        self.post(&mut c, w, Command::SetRemote { id: leg, spec }, spliced)
    }

    /// Sets a leg's media timeout (0: none). Posted.
    pub fn set_media_timeout(&self, leg: LegId, timeout: Duration) -> Result<(), BridgeError> {
        let mut c = self.control();
        let w = c.legs.get(&leg).ok_or(BridgeError::NoSuchLeg(leg))?.worker;
        self.post(
            &mut c,
            w,
            Command::SetMediaTimeout { id: leg, timeout },
            false,
        )
    }

    /// Marks the leg's outgoing packets with a DSCP (IP_TOS / IPV6_TCLASS), or clears it.
    /// Takes effect on the next packet, spliced or not.
    pub fn set_dscp(&self, leg: LegId, dscp: Option<u8>) -> Result<(), BridgeError> {
        if dscp.is_some_and(|d| d > 63) {
            return Err(BridgeError::Config(format!(
                "DSCP {dscp:?} out of range 0..=63"
            )));
        }
        let mut c = self.control();
        let e = c.legs.get_mut(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
        e.dscp_set |= dscp.is_some();
        let tos = dscp.map_or(0, |d| (d as u32) << 2);
        let v6 = e.info.rtp.is_ipv6();
        for s in std::iter::once(&e.sockets.rtp).chain(e.sockets.rtcp.as_ref()) {
            let sock = socket2::SockRef::from(s);
            let r = if v6 {
                sock.set_tclass_v6(tos)
            } else {
                sock.set_tos_v4(tos)
            };
            r.map_err(|source| BridgeError::Io {
                context: "setting DSCP",
                source,
            })?;
        }
        Ok(())
    }

    /// Splices legs (two: a call; more: one-to-many; half duplex: push-to-talk). Posted
    /// without a wait even in [`Bridge::flush`]: the worker applies queued commands before it
    /// reads any socket, so every packet that arrives after this returns is forwarded (one
    /// already read and being dropped as unspliced stays dropped: it came before).
    pub fn splice(&self, legs: &[LegId], mode: SpliceMode) -> Result<SpliceId, BridgeError> {
        let mut c = self.control();
        let first = *legs.first().ok_or(CoreError::TooFewLegs)?;
        let home = c
            .legs
            .get(&first)
            .ok_or(BridgeError::NoSuchLeg(first))?
            .worker;
        // The worker's checks, here, so that the posted command cannot fail.
        let mut distinct: Vec<LegId> = Vec::with_capacity(legs.len());
        for &leg in legs {
            let e = c.legs.get(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
            if let Some(s) = e.splice {
                return Err(CoreError::AlreadySpliced(leg, s).into());
            }
            if !distinct.contains(&leg) {
                distinct.push(leg);
            }
        }
        if distinct.len() < 2 {
            return Err(CoreError::TooFewLegs.into());
        }
        for &leg in &distinct {
            let e = c.legs.get(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
            if e.worker != home {
                let from = e.worker;
                self.move_leg(&mut c, leg, from, home)?;
            }
        }
        let id = SpliceId(c.next_splice);
        c.next_splice += 1;
        self.post(
            &mut c,
            home,
            Command::Splice {
                id,
                legs: distinct.clone(),
                mode,
            },
            false,
        )?;
        for leg in &distinct {
            if let Some(e) = c.legs.get_mut(leg) {
                e.splice = Some(id);
            }
        }
        c.splices.insert(
            id,
            SpliceEntry {
                worker: home,
                legs: distinct,
            },
        );
        Ok(id)
    }

    /// Moves an unspliced leg from worker `from` to `home`. A round trip each way; commands
    /// posted to either worker before are applied first (their queues are in order).
    fn move_leg(
        &self,
        c: &mut Control,
        leg: LegId,
        from: usize,
        home: usize,
    ) -> Result<(), BridgeError> {
        let (detached, sockets) = self.call(from, |reply| Command::Detach { id: leg, reply })?;
        self.call(home, |reply| Command::Attach {
            leg: detached,
            sockets,
            reply,
        })?;
        if let Some(e) = c.legs.get_mut(&leg) {
            e.worker = home;
        }
        c.load[from] = c.load[from].saturating_sub(1);
        c.load[home] += 1;
        Ok(())
    }

    /// Dissolves the splices `remove` and splices each group of `add` in one step on the
    /// worker that holds them, so media never sees a state in between (a two-party call
    /// becomes multi-party, or a multi-party call splits into subgroups). Legs of the groups
    /// that are not spliced are moved to that worker first. Returns the new splices' ids, in
    /// the order of `add`. On error nothing changed.
    pub fn resplice(
        &self,
        remove: &[SpliceId],
        add: &[(Vec<LegId>, SpliceMode)],
    ) -> Result<Vec<SpliceId>, BridgeError> {
        let mut c = self.control();
        let mut home = None;
        for id in remove {
            let w = c
                .splices
                .get(id)
                .ok_or(BridgeError::NoSuchSplice(*id))?
                .worker;
            match home {
                None => home = Some(w),
                Some(h) if h != w => {
                    return Err(BridgeError::Config(format!(
                        "splices {remove:?} live on different workers"
                    )));
                }
                Some(_) => {}
            }
        }
        let first = add
            .iter()
            .flat_map(|(legs, _)| legs.first())
            .next()
            .copied();
        let home = match (home, first) {
            (Some(h), _) => h,
            (None, Some(l)) => c.legs.get(&l).ok_or(BridgeError::NoSuchLeg(l))?.worker,
            (None, None) => return Ok(Vec::new()),
        };
        for leg in add.iter().flat_map(|(legs, _)| legs.iter().copied()) {
            let e = c.legs.get(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
            // Only unspliced legs can be elsewhere (the removed splices are all on `home`).
            if e.worker != home {
                let from = e.worker;
                self.move_leg(&mut c, leg, from, home)?;
            }
        }
        let mut ids = Vec::with_capacity(add.len());
        let mut groups = Vec::with_capacity(add.len());
        for (legs, mode) in add {
            let id = SpliceId(c.next_splice);
            c.next_splice += 1;
            ids.push(id);
            groups.push((id, legs.clone(), *mode));
        }
        let remove_v = remove.to_vec();
        self.call(home, |reply| Command::Resplice {
            remove: remove_v,
            add: groups,
            reply,
        })?;
        // The handle's view follows the worker's (the call above applied everything).
        for id in remove {
            for leg in c.splices.remove(id).map(|s| s.legs).unwrap_or_default() {
                if let Some(e) = c.legs.get_mut(&leg) {
                    e.splice = None;
                    // No snapshot for this leaving: statistics come from the worker.
                    e.left = None;
                }
            }
        }
        for (id, (legs, _)) in ids.iter().zip(add) {
            let mut distinct: Vec<LegId> = Vec::with_capacity(legs.len());
            for &leg in legs {
                if !distinct.contains(&leg) {
                    distinct.push(leg);
                }
                if let Some(e) = c.legs.get_mut(&leg) {
                    e.splice = Some(*id);
                }
            }
            c.splices.insert(
                *id,
                SpliceEntry {
                    worker: home,
                    legs: distinct,
                },
            );
        }
        Ok(ids)
    }

    /// Sends a copy of every packet the leg accepts, unchanged, to a recorder (out of the
    /// leg's own socket, in the same batch as the forwarded packet), or stops doing so.
    pub fn set_fork(&self, leg: LegId, fork: Option<Fork>) -> Result<(), BridgeError> {
        let w = self.worker_of(leg)?;
        self.call(w, |reply| Command::SetFork {
            id: leg,
            fork,
            reply,
        })
    }

    /// Dissolves a splice; its legs stay provisioned and can be spliced again. Posted;
    /// [`Bridge::flush`] waits for it. The worker leaves each leg's statistics as of this
    /// moment for [`Bridge::settled_stats`].
    pub fn unsplice(&self, splice: SpliceId) -> Result<Vec<LegId>, BridgeError> {
        let mut c = self.control();
        let s = c
            .splices
            .remove(&splice)
            .ok_or(BridgeError::NoSuchSplice(splice))?;
        let mut publish = Vec::with_capacity(s.legs.len());
        for leg in &s.legs {
            if let Some(e) = c.legs.get_mut(leg) {
                e.splice = None;
                e.left = Some(splice);
                publish.push((*leg, Arc::clone(&e.snapshot)));
            }
        }
        self.post(
            &mut c,
            s.worker,
            Command::Unsplice {
                id: splice,
                publish,
            },
            true,
        )?;
        Ok(s.legs)
    }

    /// Grants the floor of a half-duplex splice to a leg, or frees it.
    pub fn grant_floor(&self, splice: SpliceId, leg: Option<LegId>) -> Result<(), BridgeError> {
        let w = self
            .control()
            .splices
            .get(&splice)
            .ok_or(BridgeError::NoSuchSplice(splice))?
            .worker;
        self.call(w, |reply| Command::GrantFloor {
            id: splice,
            leg,
            reply,
        })
    }

    /// Who holds the floor of a half-duplex splice.
    pub fn floor_holder(&self, splice: SpliceId) -> Result<Option<LegId>, BridgeError> {
        let w = self
            .control()
            .splices
            .get(&splice)
            .ok_or(BridgeError::NoSuchSplice(splice))?
            .worker;
        self.call(w, |reply| Command::FloorHolder { id: splice, reply })
    }

    /// Releases a leg: closes its sockets (unsplicing it first) and returns its ports to the
    /// pool, which hands them out again only after the quarantine. Posted: the sockets close
    /// when the worker has let go of them (a spliced leg: by the next [`Bridge::flush`]), and
    /// the ports go to the pool after that.
    pub fn release(&self, leg: LegId) -> Result<(), BridgeError> {
        let mut c = self.control();
        let e = c.legs.remove(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
        c.load[e.worker] = c.load[e.worker].saturating_sub(1);
        // What the worker does: leave the splice, dissolving it when fewer than two legs
        // remain.
        let spliced = e.splice.is_some();
        if let Some(sid) = e.splice
            && let Some(s) = c.splices.get_mut(&sid)
        {
            s.legs.retain(|&l| l != leg);
            if s.legs.len() < 2 {
                let rest = std::mem::take(&mut s.legs);
                c.splices.remove(&sid);
                for l in rest {
                    if let Some(other) = c.legs.get_mut(&l) {
                        other.splice = None;
                        // No snapshot for this leaving: statistics come from the worker.
                        other.left = None;
                    }
                }
            }
        }
        let r = self.post(&mut c, e.worker, Command::RemoveLeg { id: leg }, spliced);
        c.releasing.push(Releasing {
            ip: e.info.rtp.ip(),
            port: e.info.rtp.port(),
            sockets: e.sockets,
            dscp_set: e.dscp_set,
        });
        self.reap(&mut c);
        r
    }

    /// Statistics of a leg (a round trip to its worker: exact, and after everything posted).
    pub fn stats(&self, leg: LegId) -> Result<LegStats, BridgeError> {
        let w = self.worker_of(leg)?;
        self.call(w, |reply| Command::Stats { id: leg, reply })
    }

    /// Statistics of a leg, without a round trip when it can: for a leg unspliced since it
    /// was last spliced, the counters as of that unsplice (after a [`Bridge::flush`], or this
    /// call flushes once), with `idle` brought up to now. What it received after the unsplice
    /// (nothing is forwarded) is not counted. Otherwise as [`Bridge::stats`].
    pub fn settled_stats(&self, leg: LegId) -> Result<LegStats, BridgeError> {
        let cell = {
            let c = self.control();
            let e = c.legs.get(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
            match (e.splice, e.left) {
                (None, Some(left)) => Some((Arc::clone(&e.snapshot), left)),
                _ => None,
            }
        };
        if let Some((cell, left)) = cell {
            for attempt in 0..2 {
                let snap = cell.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some((from, mut st, at_ns)) = snap
                    && from == left
                {
                    let later = Duration::from_nanos(self.now_ns().saturating_sub(at_ns));
                    st.idle = st.idle.map(|d| d + later);
                    return Ok(st);
                }
                if attempt == 0 {
                    self.flush()?;
                }
            }
        }
        self.stats(leg)
    }

    /// Local addresses of a leg.
    pub fn leg_info(&self, leg: LegId) -> Result<LegInfo, BridgeError> {
        self.control()
            .legs
            .get(&leg)
            .map(|e| e.info)
            .ok_or(BridgeError::NoSuchLeg(leg))
    }

    /// Legs currently provisioned.
    pub fn leg_count(&self) -> usize {
        self.control().legs.len()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.shutdown();
        }
    }
}

/// SO_RCVBUF of a fresh UDP socket, as a value to set (the kernel reports twice what was set).
fn default_rcvbuf() -> std::io::Result<usize> {
    // Unbound: a namespace without a loopback address has one too.
    let probe = RawSocket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    Ok(probe.recv_buffer_size()? / 2)
}
