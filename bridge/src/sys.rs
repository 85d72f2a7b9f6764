//! Batched UDP I/O on preallocated buffers: `recvmmsg` into a fixed set of buffers and
//! `sendmmsg` out of those same buffers. This is the only `unsafe` of the bridge; everything is
//! allocated once, so the packet path never allocates.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::RawFd,
};

/// Largest datagram a leg accepts; longer ones are truncated by the kernel and dropped as
/// invalid (MSG_TRUNC).
pub const MAX_DATAGRAM: usize = 2048;

fn to_storage(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    // SAFETY: sockaddr_storage is large and aligned enough for both sockaddr_in and
    // sockaddr_in6; we write exactly one of them.
    unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let sin = out as *mut _ as *mut libc::sockaddr_in;
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                (*sin).sin_zero = [0; 8];
                size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                let sin6 = out as *mut _ as *mut libc::sockaddr_in6;
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_flowinfo = a.flowinfo();
                (*sin6).sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                (*sin6).sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>() as libc::socklen_t
            }
        }
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field tells which struct the kernel wrote.
    unsafe {
        match s.ss_family as libc::c_int {
            libc::AF_INET => {
                let sin = &*(s as *const _ as *const libc::sockaddr_in);
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = &*(s as *const _ as *const libc::sockaddr_in6);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// A batch of receive buffers with their `mmsghdr`s, set up once.
pub struct RecvBatch {
    /// Bytes per buffer.
    size: usize,
    bufs: Box<[u8]>,
    iovs: Box<[libc::iovec]>,
    addrs: Box<[libc::sockaddr_storage]>,
    msgs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside point into the batch's own boxed slices, which move with it.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `n` buffers of [`MAX_DATAGRAM`] bytes.
    pub fn new(n: usize) -> Self {
        Self::with_size(n, MAX_DATAGRAM)
    }

    /// `n` buffers of `size` bytes (at least one of each).
    pub fn with_size(n: usize, size: usize) -> Self {
        let n = n.max(1);
        let size = size.max(1);
        let mut bufs = vec![0u8; n * size].into_boxed_slice();
        // SAFETY: all-zero is a valid value for these C structs.
        let mut addrs: Box<[libc::sockaddr_storage]> =
            (0..n).map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Box<[libc::iovec]> = (0..n)
            .map(|i| libc::iovec {
                iov_base: bufs[i * size..].as_mut_ptr() as *mut libc::c_void,
                iov_len: size,
            })
            .collect();
        let msgs: Box<[libc::mmsghdr]> = (0..n)
            .map(|i| {
                // SAFETY: zeroed msghdr, then the fields we use are set.
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                m.msg_hdr.msg_iov = &mut iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Self {
            size,
            bufs,
            iovs,
            addrs,
            msgs,
        }
    }

    /// Capacity of the batch.
    pub fn capacity(&self) -> usize {
        self.msgs.len()
    }

    /// Receives up to a batch without blocking. `Ok(0)` means nothing was waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for m in self.msgs.iter_mut() {
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
        // SAFETY: msgs/iovs/addrs/bufs are valid for the whole batch and outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                self.msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    /// Packet `i` of the last `recv`: its bytes and source, or `None` if it was truncated
    /// (longer than the buffer) or has no usable source address.
    #[inline]
    pub fn packet(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let m = &self.msgs[i];
        if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (m.msg_len as usize).min(self.size);
        let src = from_storage(&self.addrs[i])?;
        Some((&self.bufs[i * self.size..i * self.size + len], src))
    }

    /// Keeps `iovs` alive (they are referenced only through raw pointers).
    #[allow(dead_code)]
    fn iovs(&self) -> &[libc::iovec] {
        &self.iovs
    }
}

/// Outgoing datagrams for one socket, pointing into a [`RecvBatch`]'s buffers. Must be
/// flushed before that batch receives again.
pub struct SendBatch {
    iovs: Box<[libc::iovec]>,
    addrs: Box<[libc::sockaddr_storage]>,
    msgs: Box<[libc::mmsghdr]>,
    len: usize,
    bytes: u64,
}

// SAFETY: as for RecvBatch; the data pointers are only dereferenced by the kernel during
// `flush`, on the thread that owns both batches.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// Room for `n` datagrams.
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        // SAFETY: all-zero is valid for these C structs; pointers are set in `push`.
        let addrs: Box<[libc::sockaddr_storage]> = (0..n).map(|_| unsafe { zeroed() }).collect();
        let iovs: Box<[libc::iovec]> = (0..n)
            .map(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })
            .collect();
        let msgs: Box<[libc::mmsghdr]> = (0..n).map(|_| unsafe { zeroed() }).collect();
        Self {
            iovs,
            addrs,
            msgs,
            len: 0,
            bytes: 0,
        }
    }

    /// Queued datagrams.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the batch is full.
    pub fn is_full(&self) -> bool {
        self.len == self.msgs.len()
    }

    /// Queued bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Queues `data` (which must stay valid until `flush`) for `dst`. The caller checks
    /// `is_full` first.
    #[inline]
    pub fn push(&mut self, data: &[u8], dst: SocketAddr) {
        let i = self.len;
        if i >= self.msgs.len() {
            return;
        }
        let namelen = to_storage(&dst, &mut self.addrs[i]);
        self.iovs[i] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let m = &mut self.msgs[i];
        m.msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
        m.msg_hdr.msg_namelen = namelen;
        m.msg_hdr.msg_iov = &mut self.iovs[i];
        m.msg_hdr.msg_iovlen = 1;
        m.msg_len = 0;
        self.len += 1;
        self.bytes += data.len() as u64;
    }

    /// Sends everything queued on `fd` without blocking. Returns `(sent, failed)`: datagrams
    /// the kernel would not take (full send buffer, unreachable) are dropped and counted, never
    /// retried later (media is real time: late is as bad as lost).
    pub fn flush(&mut self, fd: RawFd) -> (usize, usize) {
        let total = self.len;
        let mut sent = 0;
        let mut failed = 0;
        while sent + failed < total {
            let start = sent + failed;
            // SAFETY: msgs[start..total] were set up by push with pointers valid until now.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[start..].as_mut_ptr(),
                    (total - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                sent += n as usize;
            } else {
                // The datagram at `start` failed (EAGAIN, ECONNREFUSED, ...): skip it.
                failed += 1;
            }
        }
        self.len = 0;
        self.bytes = 0;
        (sent, failed)
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.len = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{net::UdpSocket, os::fd::AsRawFd};

    #[test]
    fn batched_round_trip_preserves_bytes_and_sources() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 10 + i as usize]).collect();
        let mut send = SendBatch::new(8);
        for p in &payloads {
            send.push(p, b.local_addr().unwrap());
        }
        assert_eq!(send.len(), 5);
        assert_eq!(send.flush(a.as_raw_fd()), (5, 0));
        let mut recv = RecvBatch::new(8);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = recv.recv(b.as_raw_fd()).unwrap();
            for i in 0..n {
                let (data, src) = recv.packet(i).unwrap();
                assert_eq!(src, a.local_addr().unwrap());
                got.push(data.to_vec());
            }
            if got.len() == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, payloads);
        assert_eq!(
            recv.recv(b.as_raw_fd()).unwrap(),
            0,
            "nothing left: no blocking"
        );
    }

    #[test]
    fn oversized_datagrams_are_flagged() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(&vec![1u8; MAX_DATAGRAM + 1], b.local_addr().unwrap())
            .unwrap();
        let mut recv = RecvBatch::new(2);
        let mut n = 0;
        for _ in 0..100 {
            n = recv.recv(b.as_raw_fd()).unwrap();
            if n > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(n, 1);
        assert!(recv.packet(0).is_none());
    }

    #[test]
    fn ipv6_addresses_round_trip_through_storage() {
        let addr: SocketAddr = "[2001:db8::5]:30000".parse().unwrap();
        // SAFETY: zeroed storage is valid.
        let mut s: libc::sockaddr_storage = unsafe { zeroed() };
        to_storage(&addr, &mut s);
        assert_eq!(from_storage(&s), Some(addr));
    }
}
