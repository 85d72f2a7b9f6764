//! The warm reserve: bound RTP/RTCP socket pairs that belong to no leg, so that provisioning a
//! leg does not create, bind and (at release) close sockets — the bulk of a call's setup cost
//! in the kernel.
//!
//! A pair is either *ready* (can be handed out now) or *resting* (released by a call, waiting
//! out the port quarantine, exactly as a closed port would). While idle, a pair is *parked*: its
//! receive buffers are shrunk to the kernel's minimum (a flood at idle ports cannot pin memory;
//! with the XDP data plane nothing reaches them anyway) and its DSCP is cleared. Unparking
//! drains whatever arrived meanwhile — late packets of an old call never reach a new one — and
//! restores the buffers.
//!
//! Owns: the idle pairs and the socket options of parking. Does not own: the port pool (ports
//! of pairs held here stay allocated in it until the reserve closes them) or any leg state.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, UdpSocket},
};

use socket2::SockRef;

use crate::worker::LegSockets;

/// A released pair resting out the quarantine.
struct Resting {
    ip: IpAddr,
    port: u16,
    sockets: LegSockets,
    ready_at_ns: u64,
}

/// Receive buffer sizes of an unparked pair.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Buffers {
    /// SO_RCVBUF of the RTP socket (0: leave the kernel's default).
    pub rtp: usize,
    /// SO_RCVBUF of the RTCP socket (the kernel's default, as a fresh socket has).
    pub rtcp: usize,
}

/// Idle bound pairs: ready per address, resting in release order.
pub(crate) struct Reserve {
    ready: HashMap<IpAddr, Vec<(u16, LegSockets)>>,
    resting: VecDeque<Resting>,
    /// Resting pairs per address (what `resting` holds, counted as it changes).
    resting_by_ip: HashMap<IpAddr, usize>,
    quarantine_ns: u64,
    /// Most pairs held (ready + resting); a pair released beyond it is closed.
    capacity: usize,
    held: usize,
}

impl Reserve {
    pub(crate) fn new(quarantine_ns: u64, capacity: usize) -> Self {
        Self {
            ready: HashMap::new(),
            resting: VecDeque::new(),
            resting_by_ip: HashMap::new(),
            quarantine_ns,
            capacity,
            held: 0,
        }
    }

    /// Pairs held (ready + resting).
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    /// Ready pairs of an address.
    pub(crate) fn ready(&self, ip: IpAddr) -> usize {
        self.ready.get(&ip).map_or(0, Vec::len)
    }

    /// Resting pairs of an address.
    pub(crate) fn resting(&self, ip: IpAddr) -> usize {
        self.resting_by_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Whether another pair fits.
    pub(crate) fn has_room(&self) -> bool {
        self.held < self.capacity
    }

    /// Moves pairs whose quarantine is over to the ready lists.
    fn promote(&mut self, now_ns: u64) {
        while self
            .resting
            .front()
            .is_some_and(|r| r.ready_at_ns <= now_ns)
        {
            if let Some(r) = self.resting.pop_front() {
                if let Some(n) = self.resting_by_ip.get_mut(&r.ip) {
                    *n -= 1;
                }
                self.ready
                    .entry(r.ip)
                    .or_default()
                    .push((r.port, r.sockets));
            }
        }
    }

    /// A ready pair of `ip` (the most recently readied: its memory is the warmest), parked.
    pub(crate) fn take(&mut self, ip: IpAddr, now_ns: u64) -> Option<(u16, LegSockets)> {
        self.promote(now_ns);
        let pair = self.ready.get_mut(&ip)?.pop()?;
        self.held -= 1;
        Some(pair)
    }

    /// Holds a parked pair, ready now (a fresh one). Gives it back when full.
    pub(crate) fn add_ready(
        &mut self,
        ip: IpAddr,
        port: u16,
        sockets: LegSockets,
    ) -> Result<(), LegSockets> {
        if !self.has_room() {
            return Err(sockets);
        }
        self.held += 1;
        self.ready.entry(ip).or_default().push((port, sockets));
        Ok(())
    }

    /// Holds a parked pair released at `now_ns`: ready after the quarantine. Gives it back
    /// when full.
    pub(crate) fn add_released(
        &mut self,
        ip: IpAddr,
        port: u16,
        sockets: LegSockets,
        now_ns: u64,
    ) -> Result<(), LegSockets> {
        if !self.has_room() {
            return Err(sockets);
        }
        self.held += 1;
        *self.resting_by_ip.entry(ip).or_default() += 1;
        self.resting.push_back(Resting {
            ip,
            port,
            sockets,
            ready_at_ns: now_ns.saturating_add(self.quarantine_ns),
        });
        Ok(())
    }
}

/// Parks a pair: minimal receive buffers and, when a call set one, no DSCP.
pub(crate) fn park(sockets: &LegSockets, v6: bool, clear_dscp: bool) -> io::Result<()> {
    for s in sockets.iter() {
        // 0 is raised to the kernel's minimum (a couple of packets).
        SockRef::from(s).set_recv_buffer_size(0)?;
        if clear_dscp {
            let s = SockRef::from(s);
            if v6 {
                s.set_tclass_v6(0)?;
            } else {
                s.set_tos_v4(0)?;
            }
        }
    }
    Ok(())
}

/// Unparks a pair: discards what arrived while it was idle, then restores its buffers.
/// Returns how many datagrams were discarded.
pub(crate) fn unpark(sockets: &LegSockets, buffers: Buffers) -> io::Result<usize> {
    let discarded = drain(&sockets.rtp)? + sockets.rtcp.as_ref().map_or(Ok(0), drain)?;
    if buffers.rtp > 0 {
        SockRef::from(&sockets.rtp).set_recv_buffer_size(buffers.rtp)?;
    }
    if let Some(r) = &sockets.rtcp
        && buffers.rtcp > 0
    {
        SockRef::from(r).set_recv_buffer_size(buffers.rtcp)?;
    }
    Ok(discarded)
}

/// Reads a non-blocking socket empty.
fn drain(s: &UdpSocket) -> io::Result<usize> {
    let mut buf = [0u8; 1];
    let mut n = 0;
    loop {
        // Truncated reads still dequeue the whole datagram.
        match s.recv(&mut buf) {
            Ok(_) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // An ICMP error queued by an earlier send: consumed by this read; keep going.
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    const S: u64 = 1_000_000_000;

    fn pair() -> LegSockets {
        let bind = || {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        };
        LegSockets {
            rtp: bind(),
            rtcp: Some(bind()),
        }
    }

    fn v4() -> IpAddr {
        IpAddr::from(Ipv4Addr::LOCALHOST)
    }

    #[test]
    fn released_pairs_wait_out_the_quarantine_and_come_back_newest_first() {
        let mut r = Reserve::new(2 * S, 10);
        assert!(r.add_released(v4(), 30000, pair(), S).is_ok());
        assert!(r.take(v4(), 2 * S).is_none(), "still resting");
        assert_eq!(r.resting(v4()), 1);
        assert!(r.add_ready(v4(), 30002, pair()).is_ok());
        assert_eq!(r.take(v4(), 2 * S).map(|p| p.0), Some(30002));
        assert_eq!(r.take(v4(), 3 * S).map(|p| p.0), Some(30000));
        assert!(r.take(v4(), 10 * S).is_none());
        assert_eq!(r.held(), 0);
        let other = IpAddr::from([127, 0, 0, 2]);
        assert!(r.add_ready(v4(), 30004, pair()).is_ok());
        assert!(r.take(other, 0).is_none(), "pairs belong to their address");
    }

    #[test]
    fn a_full_reserve_gives_pairs_back() {
        let mut r = Reserve::new(0, 1);
        assert!(r.add_ready(v4(), 30000, pair()).is_ok());
        assert!(r.add_ready(v4(), 30002, pair()).is_err());
        assert!(r.add_released(v4(), 30002, pair(), 0).is_err());
        assert!(!r.has_room());
        assert!(r.take(v4(), 0).is_some());
        assert!(r.has_room());
    }

    #[test]
    fn unparking_discards_what_arrived_while_idle_and_restores_buffers() {
        let p = pair();
        park(&p, false, true).unwrap();
        let small = SockRef::from(&p.rtp).recv_buffer_size().unwrap();
        let to: SocketAddr = p.rtp.local_addr().unwrap();
        let to_rtcp: SocketAddr = p.rtcp.as_ref().unwrap().local_addr().unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        for _ in 0..3 {
            tx.send_to(b"late packet of an old call", to).unwrap();
        }
        tx.send_to(b"late rtcp", to_rtcp).unwrap();
        let n = unpark(
            &p,
            Buffers {
                rtp: 1 << 20,
                rtcp: 0,
            },
        )
        .unwrap();
        // A minimal buffer may have dropped some of the three, never all.
        assert!((2..=4).contains(&n), "discarded {n}");
        let mut buf = [0u8; 64];
        assert_eq!(
            p.rtp.recv(&mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock),
            "nothing of the idle time is left"
        );
        let big = SockRef::from(&p.rtp).recv_buffer_size().unwrap();
        assert!(big > small, "buffers restored: {small} -> {big}");
        // What arrives after unparking is the new call's.
        tx.send_to(b"new call", to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(p.rtp.recv(&mut buf).unwrap(), 8);
    }
}
