//! Batched UDP I/O: `sendmmsg` and `recvmmsg` over buffers allocated once.
//!
//! Buffers, iovecs and message headers live in vectors that are never resized after
//! construction; the raw pointers the system calls need are written into the headers right
//! before each call, so the structs can be moved freely between calls.

use std::{
    io, mem,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd as _, RawFd},
    ptr,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, SockRef, Socket, Type};

use crate::{
    Error,
    rtp::{RTP_HEADER_LEN, RtpStream},
};

/// Largest batch: the kernel caps `vlen` of `sendmmsg`/`recvmmsg` at `UIO_MAXIOV`.
pub const MAX_BATCH: usize = 1024;
/// Largest UDP payload the sender builds (a 9000-byte jumbo frame minus IPv4 and UDP headers).
pub const MAX_PAYLOAD: usize = 8972;
/// Receive buffer per datagram; longer datagrams are counted with their full length but
/// truncated in the buffer.
pub const RECV_SLOT: usize = 2048;
/// Control-message space per datagram (one `IP_TOS` or `IPV6_TCLASS` message fits easily).
const CMSG_SPACE: usize = 64;
/// SSRC of the generated stream ("RTPE").
const SSRC: u32 = 0x5254_5045;

/// An all-zero value of a C struct made of integers and raw pointers.
fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for libc's iovec, mmsghdr and sockaddr_storage, for which all-zero
    // bytes are valid (zero integers, null pointers).
    unsafe { mem::zeroed() }
}

fn check_batch(batch: usize) -> Result<(), Error> {
    if (1..=MAX_BATCH).contains(&batch) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "batch of {batch}: must be 1 to {MAX_BATCH}"
        )))
    }
}

/// Preallocated `sendmmsg` state for any socket: `batch` slots of `slot_len` bytes, each sent as
/// one datagram. The caller fills the slots ([`MmsgTx::slot_mut`]) and sends the first `n` of
/// them from a connected socket ([`MmsgTx::send`]).
pub struct MmsgTx {
    slot_len: usize,
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl MmsgTx {
    /// `batch` slots of `slot_len` bytes (1 to [`MAX_PAYLOAD`]).
    pub fn new(batch: usize, slot_len: usize) -> Result<Self, Error> {
        check_batch(batch)?;
        if !(1..=MAX_PAYLOAD).contains(&slot_len) {
            return Err(Error::Invalid(format!(
                "slot of {slot_len} bytes: must be 1 to {MAX_PAYLOAD}"
            )));
        }
        Ok(Self {
            slot_len,
            bufs: vec![0; slot_len * batch],
            iovs: vec![zeroed(); batch],
            msgs: vec![zeroed(); batch],
        })
    }

    /// Number of slots: the largest number of datagrams one call sends.
    pub fn batch(&self) -> usize {
        self.msgs.len()
    }

    /// Slot `i` (below [`MmsgTx::batch`]), to be filled before [`MmsgTx::send`].
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        let len = self.slot_len;
        &mut self.bufs[i * len..(i + 1) * len]
    }

    /// Sends the first `n` slots (at most [`MmsgTx::batch`]), each `len` bytes long (at most the
    /// slot length), in one `sendmmsg` call on the connected socket `fd`. Returns how many the
    /// kernel took.
    pub fn send(&mut self, fd: RawFd, n: usize, len: usize) -> io::Result<usize> {
        let n = n.min(self.msgs.len());
        let len = len.min(self.slot_len);
        for (buf, (iov, msg)) in self
            .bufs
            .chunks_exact_mut(self.slot_len)
            .zip(self.iovs.iter_mut().zip(self.msgs.iter_mut()))
            .take(n)
        {
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len,
            };
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg.msg_len = 0;
        }
        // SAFETY: the first `n` headers point at one iovec each, which points at `len` bytes
        // (at most a slot) of `bufs`; all of them live (unmoved, unaliased) for the duration of
        // the call. Names and control buffers are null with zero length (connected socket).
        let sent = unsafe { libc::sendmmsg(fd, self.msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// Sends RTP-shaped datagrams of one size from one socket to one destination, a batch per
/// `sendmmsg` call.
pub struct BatchSender {
    socket: Socket,
    payload_len: usize,
    tx: MmsgTx,
    rtp: RtpStream,
}

impl BatchSender {
    /// A UDP socket bound to `src` (any address and port when `None`) and connected to `dst`,
    /// sending `payload_len`-byte payloads in batches of up to `batch`.
    pub fn new(
        src: Option<SocketAddr>,
        dst: SocketAddr,
        payload_len: usize,
        batch: usize,
    ) -> Result<Self, Error> {
        check_batch(batch)?;
        if !(RTP_HEADER_LEN..=MAX_PAYLOAD).contains(&payload_len) {
            return Err(Error::Invalid(format!(
                "payload of {payload_len} bytes: must be {RTP_HEADER_LEN} to {MAX_PAYLOAD}"
            )));
        }
        if let Some(src) = src
            && src.is_ipv4() != dst.is_ipv4()
        {
            return Err(Error::Invalid(format!(
                "source {src} and destination {dst} are of different address families"
            )));
        }
        let socket = Socket::new(Domain::for_address(dst), Type::DGRAM, Some(Protocol::UDP))
            .map_err(Error::io("creating a UDP socket"))?;
        if let Some(src) = src {
            socket
                .bind(&src.into())
                .map_err(Error::io(format!("binding {src}")))?;
        }
        // Connected: the route is looked up once, not per packet. An ICMP error that comes back
        // surfaces as one ECONNREFUSED from a later call (see `is_transient`).
        socket
            .connect(&dst.into())
            .map_err(Error::io(format!("connecting to {dst}")))?;
        Ok(Self {
            socket,
            payload_len,
            tx: MmsgTx::new(batch, payload_len)?,
            rtp: RtpStream::new(SSRC, 160),
        })
    }

    /// The largest number of datagrams one call sends.
    pub fn batch(&self) -> usize {
        self.tx.batch()
    }

    /// The local address the socket is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok().and_then(|a| a.as_socket())
    }

    /// Sends up to `n` datagrams (at most [`BatchSender::batch`]) in one `sendmmsg` call and
    /// returns how many the kernel took. The RTP sequence advances by that number.
    pub fn send_batch(&mut self, n: usize) -> io::Result<usize> {
        let n = n.min(self.tx.batch());
        for i in 0..n {
            // `i < batch <= MAX_BATCH`, so it fits a u16.
            self.rtp.fill(self.tx.slot_mut(i), i as u16);
        }
        let sent = self.tx.send(self.socket.as_raw_fd(), n, self.payload_len)?;
        self.rtp.advance(sent as u16);
        Ok(sent)
    }
}

/// True for send errors that a load generator counts and carries on after: a full queue
/// (`ENOBUFS`, `EAGAIN`), a signal (`EINTR`), or an ICMP port unreachable reported back on
/// the connected socket (`ECONNREFUSED`: nothing listens, which is one of the cases measured).
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED)
    )
}

/// Control-message buffer, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE]);

/// One received datagram, as reported by [`BatchReceiver::datagram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// UDP payload length (the full length, even if longer than the receive slot).
    pub len: usize,
    /// Source address (detailed receivers only).
    pub source: Option<SocketAddr>,
    /// IPv4 TOS byte or IPv6 traffic class (detailed receivers only): DSCP in the upper six
    /// bits, ECN in the lower two.
    pub tos: Option<u8>,
}

/// Preallocated `recvmmsg` state for any socket: `batch` receive slots of [`RECV_SLOT`] bytes,
/// optionally with each datagram's source address and control messages.
pub struct MmsgRx {
    detailed: bool,
    bufs: Vec<u8>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    names: Vec<libc::sockaddr_storage>,
    ctrl: Vec<CmsgBuf>,
}

impl MmsgRx {
    /// `batch` slots; `detailed` also records sources and control messages (TOS).
    pub fn new(batch: usize, detailed: bool) -> Result<Self, Error> {
        check_batch(batch)?;
        Ok(Self {
            detailed,
            bufs: vec![0; RECV_SLOT * batch],
            iovs: vec![zeroed(); batch],
            msgs: vec![zeroed(); batch],
            names: vec![zeroed(); batch],
            ctrl: vec![CmsgBuf([0; CMSG_SPACE]); batch],
        })
    }

    /// Number of slots.
    pub fn batch(&self) -> usize {
        self.msgs.len()
    }

    /// One `recvmmsg` call on `fd` with `flags` (e.g. `MSG_DONTWAIT`, `MSG_WAITFORONE`).
    /// Returns the number received; 0 when nothing was waiting (`EAGAIN`) or a signal came.
    pub fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        for (i, ((buf, iov), msg)) in self
            .bufs
            .chunks_exact_mut(RECV_SLOT)
            .zip(self.iovs.iter_mut())
            .zip(self.msgs.iter_mut())
            .enumerate()
        {
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: RECV_SLOT,
            };
            let hdr = &mut msg.msg_hdr;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            hdr.msg_flags = 0;
            if self.detailed {
                hdr.msg_name = ptr::from_mut(&mut self.names[i]).cast();
                hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                hdr.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
                hdr.msg_controllen = CMSG_SPACE;
            }
            msg.msg_len = 0;
        }
        // SAFETY: every header points at one iovec over its own RECV_SLOT bytes of `bufs` and,
        // for detailed receivers, at its own sockaddr_storage and aligned control buffer, with
        // the capacities given; all live, unmoved and unaliased for the duration of the call.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                flags,
                ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(got as usize)
    }

    /// Payload length of datagram `i` of the last batch (the full length, even if truncated).
    pub fn len(&self, i: usize) -> usize {
        self.msgs.get(i).map_or(0, |m| m.msg_len as usize)
    }

    /// The bytes of datagram `i` of the last batch that fit its slot.
    pub fn payload(&self, i: usize) -> &[u8] {
        let len = self.len(i).min(RECV_SLOT);
        self.bufs
            .get(i * RECV_SLOT..i * RECV_SLOT + len)
            .unwrap_or_default()
    }

    /// Datagram `i` of the last batch.
    pub fn datagram(&self, i: usize) -> Datagram {
        let len = self.len(i);
        let (source, tos) = match (self.detailed, self.msgs.get(i)) {
            (true, Some(m)) => (self.source(i, m.msg_hdr.msg_namelen), tos_of(&m.msg_hdr)),
            _ => (None, None),
        };
        Datagram { len, source, tos }
    }

    fn source(&self, i: usize, namelen: libc::socklen_t) -> Option<SocketAddr> {
        let name = self.names.get(i)?;
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: sockaddr_storage is one of the platform's sockaddr types.
        unsafe { *storage.view_as::<libc::sockaddr_storage>() = *name };
        // SAFETY: the storage holds the address the kernel wrote, `namelen` bytes of it
        // (at most the storage size, which is what we offered).
        let addr = unsafe { SockAddr::new(storage, namelen) };
        addr.as_socket()
    }
}

/// Receives datagrams on one bound socket, a batch per `recvmmsg` call; optionally with each
/// datagram's source address and TOS byte (`IP_RECVTOS` / `IPV6_RECVTCLASS`).
pub struct BatchReceiver {
    socket: Socket,
    rx: MmsgRx,
}

impl BatchReceiver {
    /// A UDP socket bound to `addr`, receiving up to `batch` datagrams per call and waiting at
    /// most `timeout` for the first. `detailed` also records sources and TOS bytes.
    pub fn bind(
        addr: SocketAddr,
        batch: usize,
        detailed: bool,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let rx = MmsgRx::new(batch, detailed)?;
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(Error::io("creating a UDP socket"))?;
        socket
            .set_read_timeout(Some(timeout))
            .map_err(Error::io("setting the receive timeout"))?;
        if detailed {
            if addr.is_ipv4() {
                socket.set_recv_tos_v4(true)
            } else {
                socket.set_recv_tclass_v6(true)
            }
            .map_err(Error::io("asking for the TOS byte of received packets"))?;
        }
        socket
            .bind(&addr.into())
            .map_err(Error::io(format!("binding {addr}")))?;
        Ok(Self { socket, rx })
    }

    /// Asks for a receive buffer of `bytes` (with `SO_RCVBUFFORCE` when privileged, which
    /// ignores `net.core.rmem_max`, else `SO_RCVBUF`) and returns the size the kernel set.
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<usize, Error> {
        set_recv_buffer(&self.socket, bytes)
    }

    /// The local address the socket is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok().and_then(|a| a.as_socket())
    }

    /// Waits up to the timeout for a datagram, then takes whatever else is queued, up to a
    /// batch. Returns the number received; 0 when the timeout passed or a signal came.
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        self.rx.recv(self.socket.as_raw_fd(), libc::MSG_WAITFORONE)
    }

    /// Payload length of datagram `i` of the last batch.
    pub fn len(&self, i: usize) -> usize {
        self.rx.len(i)
    }

    /// Datagram `i` of the last batch (`i` below what [`BatchReceiver::recv_batch`] returned).
    pub fn datagram(&self, i: usize) -> Datagram {
        self.rx.datagram(i)
    }
}

/// Asks for a receive buffer of `bytes` on any socket (with `SO_RCVBUFFORCE` when privileged,
/// which ignores `net.core.rmem_max`, else `SO_RCVBUF`) and returns the size the kernel set
/// (twice what was asked: the kernel counts its bookkeeping too).
pub fn set_recv_buffer(socket: impl AsFd, bytes: usize) -> Result<usize, Error> {
    let sock = SockRef::from(&socket);
    let val = libc::c_int::try_from(bytes / 2).unwrap_or(libc::c_int::MAX);
    // SAFETY: a c_int option value of the right size, on a valid socket.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            ptr::from_ref(&val).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        sock.set_recv_buffer_size(bytes)
            .map_err(Error::io("setting the receive buffer size"))?;
    }
    sock.recv_buffer_size()
        .map_err(Error::io("reading the receive buffer size"))
}

/// The `IP_TOS` or `IPV6_TCLASS` control message of a received datagram.
fn tos_of(hdr: &libc::msghdr) -> Option<u8> {
    if hdr.msg_control.is_null() {
        return None;
    }
    // SAFETY: `msg_control` points at our aligned CmsgBuf and the kernel set `msg_controllen`
    // to the bytes it wrote (at most the capacity); CMSG_FIRSTHDR/CMSG_NXTHDR stay within it
    // and CMSG_DATA points inside a message of at least the header's length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            let data = libc::CMSG_DATA(c);
            if level == libc::IPPROTO_IP && kind == libc::IP_TOS {
                return Some(*data);
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_TCLASS {
                let v = ptr::read_unaligned(data.cast::<libc::c_int>());
                return u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, UdpSocket};

    use super::*;

    const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    #[test]
    fn sends_and_receives_a_batch_with_source_and_tos() {
        let mut rx = BatchReceiver::bind(LOOPBACK, 8, true, Duration::from_secs(2)).unwrap();
        let dst = rx.local_addr().unwrap();
        let mut tx = BatchSender::new(Some(LOOPBACK), dst, 172, 8).unwrap();
        let src = tx.local_addr().unwrap();
        assert_eq!(tx.send_batch(5).unwrap(), 5);
        let mut got = Vec::new();
        while got.len() < 5 {
            let n = rx.recv_batch().unwrap();
            assert!(n > 0, "timed out after {} datagrams", got.len());
            got.extend((0..n).map(|i| rx.datagram(i)));
        }
        for d in got {
            assert_eq!(
                d,
                Datagram {
                    len: 172,
                    source: Some(src),
                    tos: Some(0)
                }
            );
        }
    }

    #[test]
    fn rtp_sequence_advances_across_batches() {
        let plain = UdpSocket::bind(LOOPBACK).unwrap();
        let mut tx = BatchSender::new(None, plain.local_addr().unwrap(), 20, 4).unwrap();
        tx.send_batch(4).unwrap();
        tx.send_batch(1).unwrap();
        let mut buf = [0u8; 64];
        let mut seqs = Vec::new();
        for _ in 0..5 {
            let n = plain.recv(&mut buf).unwrap();
            assert_eq!(n, 20);
            seqs.push(u16::from_be_bytes([buf[2], buf[3]]));
        }
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn rejects_bad_sizes() {
        let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(matches!(
            BatchSender::new(None, dst, 11, 8),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            BatchSender::new(None, dst, 172, 0),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            BatchReceiver::bind(LOOPBACK, MAX_BATCH + 1, false, Duration::from_millis(1)),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn timeout_returns_zero() {
        let mut rx = BatchReceiver::bind(LOOPBACK, 4, false, Duration::from_millis(20)).unwrap();
        assert_eq!(rx.recv_batch().unwrap(), 0);
    }
}
