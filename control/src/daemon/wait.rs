//! How the control thread waits: on the ng socket itself (no reader thread between a request
//! and the engine) and on a doorbell (an eventfd) that the inbox thread rings when one of the
//! rarer inputs (HTTP API requests, event-channel events, bridge events) arrives.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crossbeam_channel::{Receiver, Sender};
use rtpedge_bridge::BridgeEvent;
use socket2::SockAddr;

use crate::{api::ApiRequest, channel::HubEvent};

/// An eventfd the inbox rings and the control thread polls.
pub struct Doorbell(OwnedFd);

impl Doorbell {
    /// A new, silent doorbell.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned at once.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Rings it (any number of rings before `quiet` count as one).
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Silences it.
    pub fn quiet(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading the 8-byte counter of a non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 8) };
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// What woke the control thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// The ng socket has datagrams.
    pub ng: bool,
    /// The doorbell rang.
    pub inbox: bool,
}

/// Waits until the ng socket is readable, the doorbell rings, or `timeout` passes.
pub fn wait(ng: RawFd, bell: &Doorbell, timeout: Duration) -> io::Result<Ready> {
    let mut fds = [
        libc::pollfd {
            fd: ng,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: bell.fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid pollfd array of its length, a valid timespec, no signal mask change.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(Ready::default());
        }
        return Err(e);
    }
    Ok(Ready {
        ng: fds[0].revents != 0,
        inbox: fds[1].revents != 0,
    })
}

/// Sends datagrams, each to its own address, in as few `sendmmsg` calls as the kernel takes
/// (a batch of ng replies: one system call, and the client is woken once rather than once per
/// reply). Returns the errors of the datagrams that failed, with their addresses.
pub fn send_all(fd: RawFd, datagrams: &[(Vec<u8>, SocketAddr)]) -> Vec<(SocketAddr, io::Error)> {
    let mut errors = Vec::new();
    let addrs: Vec<SockAddr> = datagrams.iter().map(|(_, a)| SockAddr::from(*a)).collect();
    let mut iovs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|(d, _)| libc::iovec {
            iov_base: d.as_ptr() as *mut libc::c_void,
            iov_len: d.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovs.iter_mut())
        .map(|(a, iov)| {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = a.as_ptr() as *mut libc::c_void;
            h.msg_namelen = a.len();
            h.msg_iov = iov as *mut libc::iovec;
            h.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            }
        })
        .collect();
    let mut sent = 0;
    while sent < msgs.len() {
        let rest = &mut msgs[sent..];
        // SAFETY: every header points at an address and an iovec that outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                rest.as_mut_ptr(),
                rest.len().min(u32::MAX as usize) as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first datagram of the rest failed: report it, go on with the others.
            errors.push((datagrams[sent].1, e));
            sent += 1;
        } else {
            sent += n as usize;
        }
    }
    errors
}

/// An input other than ng.
pub enum Inbox {
    /// An HTTP API request.
    Api(ApiRequest),
    /// An event-channel event.
    Hub(HubEvent),
    /// A bridge event.
    Media(BridgeEvent),
}

/// Forwards the rarer inputs to the control thread and rings its doorbell. Stops when `stop`
/// is set (checked every 100 ms) or the control thread is gone.
pub fn spawn_inbox(
    mut api: Receiver<ApiRequest>,
    mut hub: Receiver<HubEvent>,
    mut media: Receiver<BridgeEvent>,
    bell: Arc<Doorbell>,
    stop: Arc<AtomicBool>,
) -> io::Result<(Receiver<Inbox>, std::thread::JoinHandle<()>)> {
    let (tx, rx): (Sender<Inbox>, Receiver<Inbox>) = crossbeam_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name("rtpedge-inbox".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // A source whose senders are all gone is never ready again (not always).
                let item = crossbeam_channel::select! {
                    recv(api) -> r => match r {
                        Ok(r) => Some(Inbox::Api(r)),
                        Err(_) => { api = crossbeam_channel::never(); None }
                    },
                    recv(hub) -> r => match r {
                        Ok(e) => Some(Inbox::Hub(e)),
                        Err(_) => { hub = crossbeam_channel::never(); None }
                    },
                    recv(media) -> r => match r {
                        Ok(e) => Some(Inbox::Media(e)),
                        Err(_) => { media = crossbeam_channel::never(); None }
                    },
                    default(Duration::from_millis(100)) => None,
                };
                if let Some(item) = item {
                    if tx.send(item).is_err() {
                        return;
                    }
                    bell.ring();
                }
            }
        })?;
    Ok((rx, thread))
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, time::Instant};

    use super::*;

    #[test]
    fn wakes_on_a_datagram_on_the_doorbell_and_at_the_timeout() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let bell = Doorbell::new().unwrap();
        let t = Instant::now();
        let r = wait(sock.as_raw_fd(), &bell, Duration::from_millis(30)).unwrap();
        assert_eq!(r, Ready::default());
        assert!(t.elapsed() >= Duration::from_millis(25));
        bell.ring();
        bell.ring();
        let r = wait(sock.as_raw_fd(), &bell, Duration::from_secs(5)).unwrap();
        assert_eq!(
            r,
            Ready {
                ng: false,
                inbox: true
            }
        );
        bell.quiet();
        let r = wait(sock.as_raw_fd(), &bell, Duration::ZERO).unwrap();
        assert_eq!(r, Ready::default(), "quiet silences every ring");
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"x", sock.local_addr().unwrap())
            .unwrap();
        let r = wait(sock.as_raw_fd(), &bell, Duration::from_secs(5)).unwrap();
        assert_eq!(
            r,
            Ready {
                ng: true,
                inbox: false
            }
        );
    }

    #[test]
    fn send_all_delivers_each_datagram_to_its_address_and_reports_failures() {
        let from = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let batch = vec![
            (b"one".to_vec(), a.local_addr().unwrap()),
            // An IPv6 destination from an IPv4 socket fails; the rest still go.
            (b"lost".to_vec(), "[::1]:9".parse().unwrap()),
            (b"two".to_vec(), a.local_addr().unwrap()),
        ];
        let errors = send_all(from.as_raw_fd(), &batch);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "[::1]:9".parse::<SocketAddr>().unwrap());
        let mut buf = [0u8; 16];
        let (n, src) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], src), (&b"one"[..], from.local_addr().unwrap()));
        let (n, _) = a.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
    }

    #[test]
    fn the_inbox_forwards_and_rings() {
        let (api_tx, api) = crossbeam_channel::unbounded::<ApiRequest>();
        let (_hub_tx, hub) = crossbeam_channel::unbounded::<HubEvent>();
        let (media_tx, media) = crossbeam_channel::unbounded::<BridgeEvent>();
        let bell = Arc::new(Doorbell::new().unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, thread) =
            spawn_inbox(api, hub, media, Arc::clone(&bell), Arc::clone(&stop)).unwrap();
        media_tx
            .send(BridgeEvent::MediaTimeout {
                leg: rtpedge_bridge::LegId(7),
                idle: None,
            })
            .unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = wait(sock.as_raw_fd(), &bell, Duration::from_secs(5)).unwrap();
        assert!(r.inbox);
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(Inbox::Media(BridgeEvent::MediaTimeout { .. }))
        ));
        drop(api_tx);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
