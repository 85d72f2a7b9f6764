//! An I/O worker: one thread with its own epoll, owning a set of legs (their sockets and their
//! [`Core`] state). It receives in batches, asks the core where each packet goes, and sends each
//! destination's packets in one `sendmmsg` out of the receive buffers. Control changes arrive
//! on a channel (woken by an eventfd) and are applied between batches: no lock on the packet
//! path.
//!
//! Overload: each ready socket gets a bounded number of batches per wake-up (level-triggered
//! epoll brings it back next round), so one hot socket cannot starve the others, and a socket
//! is never dropped from the poll set: excess load is shed by the kernel's socket buffers
//! (counted there) and every stream recovers as soon as the load falls.

use std::{
    io,
    net::UdpSocket,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender};

use crate::{
    core::{
        BridgeEvent, Core, CoreError, DetachedLeg, Fork, LegOptions, LegStats, Outcome, Output,
        Socket,
    },
    sys::{RecvBatch, SendBatch},
    types::{LegId, RemoteSpec, SpliceId, SpliceMode},
};

/// Batches read from one socket per wake-up before moving on to the next ready socket.
const ROUNDS_PER_WAKE: usize = 4;
/// How often media timeouts are checked.
const TICK: Duration = Duration::from_millis(100);
const WAKE_TOKEN: u64 = u64::MAX;
/// Failures of posted commands kept for the next barrier (the rest are only logged).
const MAX_FAILURES: usize = 64;

/// The sockets of a leg, shared between the owner's handle (for setsockopt) and the worker.
#[derive(Debug)]
pub struct LegSockets {
    /// RTP socket (and RTCP with rtcp-mux).
    pub rtp: UdpSocket,
    /// RTCP socket, unless rtcp-mux.
    pub rtcp: Option<UdpSocket>,
}

impl LegSockets {
    /// The RTP socket, then the RTCP socket if there is one.
    pub fn iter(&self) -> impl Iterator<Item = &UdpSocket> {
        std::iter::once(&self.rtp).chain(self.rtcp.as_ref())
    }
}

type Reply<T> = Sender<Result<T, CoreError>>;

/// Where the worker leaves a leg's statistics for the owner to read without a round trip: the
/// snapshot taken when the leg left a splice (its counters as of the end of forwarding), the
/// splice, and the worker's clock (nanoseconds since the bridge's epoch) at that moment.
/// Written and read on the control path only, never by the packet path.
pub type StatsCell = Arc<Mutex<Option<(SpliceId, LegStats, u64)>>>;

/// A control change for a worker. Commands without a reply channel are *posted*: the owner
/// does not wait for them; they are applied in order, and a [`Command::Barrier`] reports the
/// failures of posted commands since the previous barrier.
pub enum Command {
    AddLeg {
        id: LegId,
        sockets: Arc<LegSockets>,
        opts: LegOptions,
    },
    RemoveLeg {
        id: LegId,
    },
    SetRemote {
        id: LegId,
        spec: RemoteSpec,
    },
    SetMediaTimeout {
        id: LegId,
        timeout: Duration,
    },
    Splice {
        id: SpliceId,
        legs: Vec<LegId>,
        mode: SpliceMode,
    },
    /// Dissolves a splice and leaves each leg's statistics in its cell.
    Unsplice {
        id: SpliceId,
        publish: Vec<(LegId, StatsCell)>,
    },
    GrantFloor {
        id: SpliceId,
        leg: Option<LegId>,
        reply: Reply<()>,
    },
    FloorHolder {
        id: SpliceId,
        reply: Reply<Option<LegId>>,
    },
    Stats {
        id: LegId,
        reply: Reply<LegStats>,
    },
    Detach {
        id: LegId,
        reply: Reply<(DetachedLeg, Arc<LegSockets>)>,
    },
    Attach {
        leg: DetachedLeg,
        sockets: Arc<LegSockets>,
        reply: Reply<()>,
    },
    /// Dissolves splices and creates others in one step (multi-party, split).
    Resplice {
        remove: Vec<SpliceId>,
        add: Vec<(SpliceId, Vec<LegId>, SpliceMode)>,
        reply: Reply<()>,
    },
    /// Sets or clears a leg's recorder fork.
    SetFork {
        id: LegId,
        fork: Option<Fork>,
        reply: Reply<()>,
    },
    /// Everything posted before is applied: acknowledge `seq` with the failures of posted
    /// commands since the last barrier.
    Barrier {
        seq: u64,
    },
    Shutdown,
}

/// A barrier's acknowledgement: its sequence number and the posted commands that failed.
pub type BarrierAck = (u64, Vec<CoreError>);

/// The owner's side of a worker.
pub struct WorkerHandle {
    tx: Sender<Command>,
    wake: OwnedFd,
    acks: Receiver<BarrierAck>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WorkerHandle {
    /// Sends a command and wakes the worker.
    pub fn send(&self, cmd: Command) -> bool {
        self.post(cmd) && {
            self.wake();
            true
        }
    }

    /// Queues a command without waking the worker (it is applied at the next wake-up, or
    /// within one tick at the latest).
    pub fn post(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Waits for the acknowledgement of barrier `seq` (earlier ones are skipped); `None` when
    /// the worker is gone.
    pub fn wait_barrier(&self, seq: u64) -> Option<Vec<CoreError>> {
        loop {
            let (s, failures) = self.acks.recv().ok()?;
            if s == seq {
                return Some(failures);
            }
        }
    }

    /// Wakes the worker (one eventfd write, whatever number of commands is queued).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Stops the worker and waits for it.
    pub fn shutdown(&mut self) {
        self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

struct SendSlot {
    slot: usize,
    socket: Socket,
    batch: SendBatch,
}

struct Worker {
    core: Core,
    epoll: OwnedFd,
    wake: RawFd,
    cmds: Receiver<Command>,
    acks: Sender<BarrierAck>,
    /// Posted commands that failed since the last barrier.
    failures: Vec<CoreError>,
    events_tx: Sender<BridgeEvent>,
    sockets: Vec<Option<Arc<LegSockets>>>,
    recv: RecvBatch,
    sends: Vec<SendSlot>,
    out: Output,
    epoch: Instant,
    running: bool,
}

/// Spawns a worker thread.
pub fn spawn(
    index: usize,
    batch: usize,
    clock_rate: u32,
    epoch: Instant,
    events_tx: Sender<BridgeEvent>,
) -> io::Result<WorkerHandle> {
    // SAFETY: plain syscalls; the fds are wrapped in OwnedFd at once.
    let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
    let wake = unsafe {
        OwnedFd::from_raw_fd(cvt(libc::eventfd(
            0,
            libc::EFD_NONBLOCK | libc::EFD_CLOEXEC,
        ))?)
    };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: WAKE_TOKEN,
    };
    // SAFETY: valid fds and event.
    cvt(unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            wake.as_raw_fd(),
            &mut ev,
        )
    })?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let (acks_tx, acks) = crossbeam_channel::unbounded();
    let wake_raw = wake.as_raw_fd();
    let thread = std::thread::Builder::new()
        .name(format!("rtpedge-w{index}"))
        .spawn(move || {
            let mut w = Worker {
                core: Core::new(clock_rate),
                epoll,
                wake: wake_raw,
                cmds: rx,
                acks: acks_tx,
                failures: Vec::new(),
                events_tx,
                sockets: Vec::new(),
                recv: RecvBatch::new(batch),
                sends: Vec::new(),
                out: Output {
                    targets: Vec::with_capacity(16),
                    events: Vec::with_capacity(16),
                },
                epoch,
                running: true,
            };
            w.run();
        })?;
    Ok(WorkerHandle {
        tx,
        wake,
        acks,
        thread: Some(thread),
    })
}

impl Worker {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn run(&mut self) {
        let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut last_tick = Instant::now();
        while self.running {
            // SAFETY: events buffer is valid for its length.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    TICK.as_millis() as libc::c_int,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "epoll_wait failed; worker stops");
                    return;
                }
                continue;
            }
            // Commands posted without a wake-up (a splice) are in effect before any socket is
            // read: a packet that arrives after the owner posted a splice is forwarded.
            if !self.cmds.is_empty() {
                self.drain_commands();
            }
            for ev in events.iter().take(n as usize) {
                let token = ev.u64;
                if token == WAKE_TOKEN {
                    let mut buf = [0u8; 8];
                    // SAFETY: draining the eventfd counter.
                    unsafe { libc::read(self.wake, buf.as_mut_ptr() as *mut libc::c_void, 8) };
                    continue;
                }
                self.service(token);
            }
            self.drain_commands();
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let now = self.now_ns();
                self.core.tick(now, &mut self.out.events);
                self.flush_events();
            }
        }
    }

    fn token(slot: usize, socket: Socket) -> u64 {
        ((slot as u64) << 1) | if socket == Socket::Rtcp { 1 } else { 0 }
    }

    fn fd_of(&self, slot: usize, socket: Socket) -> Option<RawFd> {
        let s = self.sockets.get(slot)?.as_ref()?;
        match socket {
            Socket::Rtp => Some(s.rtp.as_raw_fd()),
            Socket::Rtcp => s.rtcp.as_ref().map(AsRawFd::as_raw_fd),
        }
    }

    /// Reads and forwards what is waiting on one socket.
    fn service(&mut self, token: u64) {
        let slot = (token >> 1) as usize;
        let socket = if token & 1 == 1 {
            Socket::Rtcp
        } else {
            Socket::Rtp
        };
        let Some(fd) = self.fd_of(slot, socket) else {
            return;
        };
        for _ in 0..ROUNDS_PER_WAKE {
            let n = match self.recv.recv(fd) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED); they are per-datagram news,
                    // not a reason to stop reading the socket.
                    tracing::debug!(slot, error = %e, "recvmmsg");
                    break;
                }
            };
            let now = self.now_ns();
            for i in 0..n {
                let Some((data, src)) = self.recv.packet(i) else {
                    // Truncated (oversized) or of an unknown family: never valid media.
                    self.core.on_unusable(slot);
                    continue;
                };
                if self
                    .core
                    .on_packet(slot, socket, src, data, now, &mut self.out)
                    != Outcome::Forward
                {
                    continue;
                }
                for t in &self.out.targets {
                    let idx = match self
                        .sends
                        .iter()
                        .position(|s| s.slot == t.slot && s.socket == t.socket)
                    {
                        Some(idx) => idx,
                        None => {
                            // Grows only when a wider fan-out than ever before appears.
                            let idx = self.sends.iter().position(|s| s.batch.is_empty());
                            match idx {
                                Some(idx) => {
                                    self.sends[idx].slot = t.slot;
                                    self.sends[idx].socket = t.socket;
                                    idx
                                }
                                None => {
                                    self.sends.push(SendSlot {
                                        slot: t.slot,
                                        socket: t.socket,
                                        batch: SendBatch::new(self.recv.capacity()),
                                    });
                                    self.sends.len() - 1
                                }
                            }
                        }
                    };
                    if self.sends[idx].batch.is_full() {
                        Self::flush_slot(&mut self.core, &self.sockets, &mut self.sends[idx]);
                    }
                    self.sends[idx].batch.push(data, t.dst);
                }
            }
            // Everything queued points into the receive buffers: send before receiving again.
            for s in self.sends.iter_mut() {
                if !s.batch.is_empty() {
                    Self::flush_slot(&mut self.core, &self.sockets, s);
                }
            }
            self.flush_events();
            if n < self.recv.capacity() {
                break;
            }
        }
    }

    fn flush_slot(core: &mut Core, sockets: &[Option<Arc<LegSockets>>], s: &mut SendSlot) {
        let fd = sockets
            .get(s.slot)
            .and_then(Option::as_ref)
            .and_then(|l| match s.socket {
                Socket::Rtp => Some(l.rtp.as_raw_fd()),
                Socket::Rtcp => l.rtcp.as_ref().map(AsRawFd::as_raw_fd),
            });
        let Some(fd) = fd else {
            core.on_send_error(s.slot, s.batch.len() as u64);
            s.batch.clear();
            return;
        };
        let packets = s.batch.len() as u64;
        let bytes = s.batch.bytes();
        let (sent, failed) = s.batch.flush(fd);
        if failed == 0 {
            core.on_sent(s.slot, s.socket, false, packets, bytes);
        } else {
            // Bytes of the failed ones are not known individually; attribute proportionally.
            let sent_bytes = (bytes * sent as u64).checked_div(packets).unwrap_or(0);
            core.on_sent(s.slot, s.socket, false, sent as u64, sent_bytes);
            core.on_send_error(s.slot, failed as u64);
        }
    }

    fn flush_events(&mut self) {
        for e in self.out.events.drain(..) {
            let _ = self.events_tx.send(e);
        }
    }

    fn register(&mut self, slot: usize, sockets: &Arc<LegSockets>) -> io::Result<()> {
        let add = |fd: RawFd, socket: Socket| {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: Self::token(slot, socket),
            };
            // SAFETY: valid fds.
            cvt(unsafe {
                libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev)
            })
            .map(|_| ())
        };
        add(sockets.rtp.as_raw_fd(), Socket::Rtp)?;
        if let Some(r) = &sockets.rtcp {
            add(r.as_raw_fd(), Socket::Rtcp)?;
        }
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        self.sockets[slot] = Some(Arc::clone(sockets));
        Ok(())
    }

    fn deregister(&mut self, slot: usize) -> Option<Arc<LegSockets>> {
        let s = self.sockets.get_mut(slot)?.take()?;
        for fd in std::iter::once(s.rtp.as_raw_fd()).chain(s.rtcp.as_ref().map(AsRawFd::as_raw_fd))
        {
            // SAFETY: valid fds; failure only means it was not registered.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                )
            };
        }
        // Pending sends referencing this slot must not go out of a closed socket.
        for send in self.sends.iter_mut() {
            if send.slot == slot {
                send.batch.clear();
            }
        }
        Some(s)
    }

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            let now = self.now_ns();
            let r = match cmd {
                Command::AddLeg { id, sockets, opts } => {
                    let slot = self.core.add_leg(id, opts, now);
                    if let Err(e) = self.register(slot, &sockets) {
                        let _ = self.core.remove_leg(id);
                        self.out.events.push(BridgeEvent::Error {
                            leg: id,
                            message: format!("epoll registration failed: {e}"),
                        });
                    }
                    Ok(())
                }
                Command::RemoveLeg { id } => self.core.remove_leg(id).map(|(slot, _)| {
                    // The worker's reference to the sockets goes here; the owner closes
                    // them (and frees the ports) once it holds the last one.
                    drop(self.deregister(slot));
                }),
                Command::SetRemote { id, spec } => self.core.set_remote(id, spec, now),
                Command::SetMediaTimeout { id, timeout } => {
                    self.core.set_media_timeout(id, timeout)
                }
                Command::Splice { id, legs, mode } => self.core.splice(id, &legs, mode, now),
                Command::Unsplice { id, publish } => {
                    let r = self.core.unsplice(id).map(|_| ());
                    for (leg, cell) in publish {
                        let snapshot = self.core.stats(leg, now).ok().map(|s| (id, s, now));
                        *cell.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
                    }
                    r
                }
                Command::GrantFloor { id, leg, reply } => {
                    let _ = reply.send(self.core.grant_floor(id, leg, now));
                    Ok(())
                }
                Command::FloorHolder { id, reply } => {
                    let _ = reply.send(self.core.floor_holder(id));
                    Ok(())
                }
                Command::Stats { id, reply } => {
                    let _ = reply.send(self.core.stats(id, now));
                    Ok(())
                }
                Command::Detach { id, reply } => {
                    let r = self.core.detach(id).and_then(|(slot, leg)| {
                        self.deregister(slot)
                            .map(|s| (leg, s))
                            .ok_or(CoreError::NoSuchLeg(id))
                    });
                    let _ = reply.send(r);
                    Ok(())
                }
                Command::Attach {
                    leg,
                    sockets,
                    reply,
                } => {
                    let slot = self.core.attach(leg);
                    if let Err(e) = self.register(slot, &sockets)
                        && let Some(id) = self.core.leg_id(slot)
                    {
                        self.out.events.push(BridgeEvent::Error {
                            leg: id,
                            message: format!("epoll registration failed: {e}"),
                        });
                    }
                    let _ = reply.send(Ok(()));
                    Ok(())
                }
                Command::Resplice { remove, add, reply } => {
                    let _ = reply.send(self.core.resplice(&remove, &add, now));
                    Ok(())
                }
                Command::SetFork { id, fork, reply } => {
                    let _ = reply.send(self.core.set_fork(id, fork));
                    Ok(())
                }
                Command::Barrier { seq } => {
                    self.flush_events();
                    let _ = self.acks.send((seq, std::mem::take(&mut self.failures)));
                    Ok(())
                }
                Command::Shutdown => {
                    self.running = false;
                    Ok(())
                }
            };
            if let Err(e) = r {
                // The owner checks what it posts against its own view; this is a bug, or a
                // leg lost to a failed registration. Reported at the next barrier.
                tracing::warn!(error = %e, "bridge command failed");
                if self.failures.len() < MAX_FAILURES {
                    self.failures.push(e);
                }
            }
        }
        self.flush_events();
    }
}
