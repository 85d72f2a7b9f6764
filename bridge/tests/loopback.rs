//! The bridge with real UDP sockets on loopback: provisioning, splicing, unsplicing, half
//! duplex, multi-party, injection attempts, DSCP, IPv6, media timeout and 1,000 concurrent calls.

use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use rtpedge_bridge::{
    Bridge, BridgeConfig, BridgeEvent, LegId, LegRequest, RemoteSpec, SpliceMode,
};

/// A bridge on loopback (IPv4 and IPv6) with its own port range, so tests run in parallel.
fn bridge(workers: usize, port_min: u16, port_max: u16) -> Bridge {
    Bridge::start(BridgeConfig {
        addresses: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        port_min,
        port_max,
        workers,
        quarantine: Duration::from_secs(30),
        media_timeout: Duration::from_secs(30),
        ..BridgeConfig::default()
    })
    .expect("bridge starts")
}

fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An endpoint (phone) on loopback.
struct Peer {
    sock: UdpSocket,
}

impl Peer {
    fn new(ip: &str) -> Self {
        let sock = UdpSocket::bind(format!("{ip}:0")).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Peer { sock }
    }
    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }
    fn send(&self, to: SocketAddr, pkt: &[u8]) {
        self.sock.send_to(pkt, to).unwrap();
    }
    /// Everything that arrives until `quiet` passes with nothing new.
    fn drain(&self) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.sock.recv_from(&mut buf) {
            out.push((buf[..n].to_vec(), from));
        }
        out
    }
}

/// A two-party call: caller and callee peers and their bridge legs.
struct Call {
    caller: Peer,
    callee: Peer,
    a: rtpedge_bridge::LegInfo,
    b: rtpedge_bridge::LegInfo,
}

fn call(br: &Bridge, ip: &str) -> Call {
    let ipv6 = ip.contains(':');
    let caller = Peer::new(ip);
    let callee = Peer::new(ip);
    let a = br
        .provision(LegRequest {
            ipv6,
            ..Default::default()
        })
        .unwrap();
    let b = br
        .provision(LegRequest {
            ipv6,
            near: Some(a.id),
            ..Default::default()
        })
        .unwrap();
    br.set_remote(a.id, RemoteSpec::exact(caller.addr()))
        .unwrap();
    br.set_remote(
        b.id,
        RemoteSpec::learning(Some(callee.addr()), Duration::from_secs(5)),
    )
    .unwrap();
    Call {
        caller,
        callee,
        a,
        b,
    }
}

#[test]
fn provision_splice_unsplice_splice_again() {
    let br = bridge(2, 20000, 20999);
    let c = call(&br, "127.0.0.1");
    assert_eq!(c.a.rtp.port() % 2, 0, "RTP port even");
    assert_eq!(
        c.a.rtcp,
        Some(SocketAddr::new(c.a.rtp.ip(), c.a.rtp.port() + 1))
    );

    // Before the splice: dropped.
    c.caller.send(c.a.rtp, &rtp(1, 1, b"early"));
    assert!(c.callee.drain().is_empty());
    assert_eq!(br.stats(c.a.id).unwrap().counters.dropped_not_spliced, 1);

    let s = br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    let payload: Vec<u8> = (0..=255u8).collect();
    c.caller.send(c.a.rtp, &rtp(1, 2, &payload));
    let got = c.callee.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, rtp(1, 2, &payload), "bytes unchanged");
    assert_eq!(got[0].1, c.b.rtp, "sent from the callee-facing leg");
    c.callee.send(c.b.rtp, &rtp(2, 1, b"back"));
    let got = c.caller.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, rtp(2, 1, b"back"));
    assert_eq!(got[0].1, c.a.rtp);

    br.unsplice(s).unwrap();
    c.caller.send(c.a.rtp, &rtp(1, 3, b"after unsplice"));
    assert!(c.callee.drain().is_empty());

    br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    c.caller.send(c.a.rtp, &rtp(1, 4, b"again"));
    assert_eq!(c.callee.drain().len(), 1);
    let st = br.stats(c.b.id).unwrap();
    assert_eq!(st.counters.packets_out, 2);
    assert_eq!(st.counters.packets_in, 1);
}

#[test]
fn legs_on_different_workers_are_moved_together_on_splice() {
    let br = bridge(2, 21000, 21999);
    let caller = Peer::new("127.0.0.1");
    let callee = Peer::new("127.0.0.1");
    // No `near`: the two legs land on different workers (least loaded first).
    let a = br.provision(LegRequest::default()).unwrap();
    let b = br.provision(LegRequest::default()).unwrap();
    br.set_remote(a.id, RemoteSpec::exact(caller.addr()))
        .unwrap();
    br.set_remote(b.id, RemoteSpec::exact(callee.addr()))
        .unwrap();
    caller.send(a.rtp, &rtp(1, 1, b"queued before the splice"));
    br.splice(&[a.id, b.id], SpliceMode::Full).unwrap();
    caller.send(a.rtp, &rtp(1, 2, b"x"));
    let got = callee.drain();
    assert_eq!(
        got.len(),
        1,
        "the early packet was dropped, the spliced one forwarded"
    );
    assert_eq!(got[0].0, rtp(1, 2, b"x"));
}

#[test]
fn injected_media_is_never_forwarded() {
    let br = bridge(1, 22000, 22999);
    let c = call(&br, "127.0.0.1");
    br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    let attacker = Peer::new("127.0.0.1");
    // Genuine media from both sides first (the callee's leg latches).
    c.callee.send(c.b.rtp, &rtp(2, 1, b"genuine"));
    c.caller.send(c.a.rtp, &rtp(1, 1, b"genuine"));
    assert_eq!(c.caller.drain().len(), 1);
    assert_eq!(c.callee.drain().len(), 1);
    // RTP Inject towards both legs, and an RTP Bleed probe, from a foreign port.
    for seq in 2..20 {
        attacker.send(c.a.rtp, &rtp(1, seq, b"inject"));
        attacker.send(c.b.rtp, &rtp(2, seq, b"inject"));
    }
    assert!(c.caller.drain().is_empty());
    assert!(c.callee.drain().is_empty());
    assert!(
        attacker.drain().is_empty(),
        "no media leaked to the attacker"
    );
    // Both directions still reach the genuine remotes.
    c.caller.send(c.a.rtp, &rtp(1, 2, b"still"));
    assert_eq!(c.callee.drain().len(), 1);
    c.callee.send(c.b.rtp, &rtp(2, 2, b"still"));
    assert_eq!(c.caller.drain().len(), 1);
    assert_eq!(br.stats(c.a.id).unwrap().counters.dropped_wrong_source, 18);
    assert_eq!(br.stats(c.b.id).unwrap().counters.dropped_wrong_source, 18);
}

#[test]
fn half_duplex_and_three_party() {
    let br = bridge(1, 23000, 23999);
    let peers: Vec<Peer> = (0..3).map(|_| Peer::new("127.0.0.1")).collect();
    let legs: Vec<_> = peers
        .iter()
        .map(|p| {
            let l = br.provision(LegRequest::default()).unwrap();
            br.set_remote(l.id, RemoteSpec::exact(p.addr())).unwrap();
            l
        })
        .collect();
    let ids: Vec<LegId> = legs.iter().map(|l| l.id).collect();

    let conf = br.splice(&ids, SpliceMode::Full).unwrap();
    peers[0].send(legs[0].rtp, &rtp(10, 1, b"to all"));
    assert!(peers[0].drain().is_empty());
    assert_eq!(peers[1].drain().len(), 1);
    assert_eq!(peers[2].drain().len(), 1);
    br.unsplice(conf).unwrap();

    let ptt = br
        .splice(
            &ids,
            SpliceMode::HalfDuplex {
                release_after: Duration::from_millis(200),
            },
        )
        .unwrap();
    peers[1].send(legs[1].rtp, &rtp(11, 1, b"talker"));
    std::thread::sleep(Duration::from_millis(20));
    peers[2].send(legs[2].rtp, &rtp(12, 1, b"interrupts"));
    assert_eq!(peers[0].drain().len(), 1);
    assert_eq!(peers[2].drain().len(), 1, "third party hears the talker");
    assert!(peers[1].drain().is_empty(), "the interruption was dropped");
    assert_eq!(br.floor_holder(ptt).unwrap(), Some(ids[1]));
    br.grant_floor(ptt, Some(ids[0])).unwrap();
    peers[1].send(legs[1].rtp, &rtp(11, 2, b"no floor"));
    peers[0].send(legs[0].rtp, &rtp(10, 2, b"granted"));
    assert_eq!(peers[1].drain().len(), 1);
    assert_eq!(peers[2].drain().len(), 1);
    assert!(peers[0].drain().is_empty());
}

fn recv_tos(sock: &UdpSocket) -> Option<u8> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt/recvmsg with valid buffers.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVTOS,
            &one as *const _ as *const libc::c_void,
            4,
        );
        let mut buf = [0u8; 2048];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cmsg = [0u8; 64];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = cmsg.len();
        if libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) < 0 {
            return None;
        }
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TOS {
                return Some(*libc::CMSG_DATA(c));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        None
    }
}

#[test]
fn dscp_marks_outgoing_media_while_spliced() {
    let br = bridge(1, 24000, 24999);
    let c = call(&br, "127.0.0.1");
    br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    br.set_dscp(c.b.id, Some(46)).unwrap();
    c.caller.send(c.a.rtp, &rtp(1, 1, b"ef"));
    assert_eq!(recv_tos(&c.callee.sock), Some(46 << 2));
    br.set_dscp(c.b.id, Some(34)).unwrap();
    c.caller.send(c.a.rtp, &rtp(1, 2, b"af41"));
    assert_eq!(recv_tos(&c.callee.sock), Some(34 << 2));
    assert!(br.set_dscp(c.b.id, Some(64)).is_err());
}

#[test]
fn ipv6_call_with_rtcp() {
    let br = bridge(1, 25000, 25999);
    let c = call(&br, "::1");
    assert!(c.a.rtp.is_ipv6());
    br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    c.caller.send(c.a.rtp, &rtp(1, 1, b"v6"));
    assert_eq!(c.callee.drain().len(), 1);
    // RTCP from the caller's RTCP port reaches the callee's RTP port + 1 ... which is the
    // callee's own socket + 1; bind a receiver there if free, else just check counters.
    let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 1];
    let caller_rtcp = UdpSocket::bind(SocketAddr::new(c.caller.addr().ip(), 0)).unwrap();
    caller_rtcp.send_to(&rr, c.a.rtcp.unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let st = br.stats(c.a.id).unwrap();
    assert_eq!(
        st.counters.rtcp_in, 1,
        "RTCP from the remote's host accepted"
    );
    assert_eq!(br.stats(c.b.id).unwrap().counters.rtcp_out, 1);
}

#[test]
fn media_timeout_event_and_port_quarantine() {
    let br = Bridge::start(BridgeConfig {
        addresses: vec!["127.0.0.1".parse().unwrap()],
        port_min: 19000,
        port_max: 19007,
        workers: 1,
        quarantine: Duration::from_secs(60),
        media_timeout: Duration::from_millis(300),
        ..BridgeConfig::default()
    })
    .unwrap();
    let c = call(&br, "127.0.0.1");
    br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut timed_out = HashSet::new();
    while timed_out.len() < 2 && Instant::now() < deadline {
        if let Ok(BridgeEvent::MediaTimeout { leg, .. }) =
            br.events().recv_timeout(Duration::from_millis(100))
        {
            timed_out.insert(leg);
        }
    }
    assert_eq!(timed_out, HashSet::from([c.a.id, c.b.id]));

    // 4 pairs in 19000-19007: two in use; release one, and it is not handed out again.
    let used: HashSet<u16> = [c.a.rtp.port(), c.b.rtp.port()].into();
    br.release(c.a.id).unwrap();
    let l3 = br.provision(LegRequest::default()).unwrap();
    let l4 = br.provision(LegRequest::default()).unwrap();
    assert!(!used.contains(&l3.rtp.port()) && !used.contains(&l4.rtp.port()));
    let e = br.provision(LegRequest::default()).unwrap_err();
    assert!(e.to_string().contains("no free ports"), "{e}");
}

#[test]
fn a_thousand_concurrent_calls() {
    raise_fd_limit(16_384);
    let br = bridge(2, 50000, 54999);
    let calls: Vec<Call> = (0..1000)
        .map(|_| {
            let caller = Peer::new("127.0.0.1");
            let callee = Peer::new("127.0.0.1");
            let a = br
                .provision(LegRequest {
                    rtcp_mux: true,
                    ..Default::default()
                })
                .unwrap();
            let b = br
                .provision(LegRequest {
                    rtcp_mux: true,
                    near: Some(a.id),
                    ..Default::default()
                })
                .unwrap();
            br.set_remote(a.id, RemoteSpec::exact(caller.addr()))
                .unwrap();
            br.set_remote(b.id, RemoteSpec::exact(callee.addr()))
                .unwrap();
            br.splice(&[a.id, b.id], SpliceMode::Full).unwrap();
            caller.sock.set_nonblocking(true).unwrap();
            callee.sock.set_nonblocking(true).unwrap();
            Call {
                caller,
                callee,
                a,
                b,
            }
        })
        .collect();
    assert_eq!(br.leg_count(), 2000);
    const N: u16 = 5;
    for seq in 0..N {
        for (i, c) in calls.iter().enumerate() {
            c.caller
                .send(c.a.rtp, &rtp(i as u32, seq, &(i as u32).to_be_bytes()));
            c.callee.send(
                c.b.rtp,
                &rtp(i as u32 | 0x8000_0000, seq, &(i as u32).to_be_bytes()),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let expected = 2 * 1000 * N as usize;
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered < expected && Instant::now() < deadline {
        for (i, c) in calls.iter().enumerate() {
            for (pkt, _) in c.callee.drain().into_iter().chain(c.caller.drain()) {
                assert_eq!(
                    &pkt[12..],
                    &(i as u32).to_be_bytes(),
                    "no cross-talk between calls"
                );
                delivered += 1;
            }
        }
    }
    assert_eq!(delivered, expected);
}

fn raise_fd_limit(n: u64) {
    // SAFETY: getrlimit/setrlimit on our own process.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = n.min(r.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// Batched wake-ups (the daemon's mode): commands are posted and put in effect by `flush`,
/// which is what the owner does before acknowledging a request.
#[test]
fn batched_commands_take_effect_at_flush() {
    let br = Bridge::start(BridgeConfig {
        addresses: vec!["127.0.0.1".parse().unwrap()],
        port_min: 26000,
        port_max: 26007,
        workers: 1,
        quarantine: Duration::ZERO,
        batch_wakes: true,
        ..BridgeConfig::default()
    })
    .unwrap();
    let c = call(&br, "127.0.0.1");
    br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    // The handle checks what the worker would refuse, before posting.
    assert!(br.splice(&[c.a.id, c.b.id], SpliceMode::Full).is_err());
    assert!(br.splice(&[c.a.id, c.a.id], SpliceMode::Full).is_err());
    br.flush().unwrap();
    c.caller.send(c.a.rtp, &rtp(1, 1, b"spliced"));
    assert_eq!(
        c.callee.drain().len(),
        1,
        "the splice is in effect after flush"
    );
    c.callee.send(c.b.rtp, &rtp(2, 1, b"back"));
    assert_eq!(c.caller.drain().len(), 1);

    // Unsplice: nothing is forwarded once flush returns; the counters as of the unsplice are
    // readable without a round trip and equal the exact ones.
    let splice = br.stats(c.a.id).unwrap().splice.unwrap();
    br.unsplice(splice).unwrap();
    br.flush().unwrap();
    let settled = br.settled_stats(c.a.id).unwrap();
    let exact = br.stats(c.a.id).unwrap();
    assert_eq!(settled.counters, exact.counters);
    assert_eq!(settled.counters.packets_in, 1);
    assert_eq!(br.settled_stats(c.b.id).unwrap().counters.packets_in, 1);
    c.caller.send(c.a.rtp, &rtp(1, 2, b"after the unsplice"));
    assert!(c.callee.drain().is_empty());

    // Released legs: their sockets close once the worker lets go, and their ports come back
    // (quarantine 0) even when the pool is exhausted meanwhile.
    br.release(c.a.id).unwrap();
    br.release(c.b.id).unwrap();
    let legs: Vec<_> = (0..4)
        .map(|_| br.provision(LegRequest::default()).unwrap())
        .collect();
    assert_eq!(
        legs.len(),
        4,
        "all four pairs of 26000-26007 handed out again"
    );
    assert!(br.provision(LegRequest::default()).is_err());
    assert_eq!(br.leg_count(), 4);
}

/// The warm reserve: pairs bound before any call, and released pairs kept bound and reused
/// after the quarantine. A reused pair carries nothing of its old call: neither the late
/// packets that reached it while idle (a learning leg would latch onto them) nor its DSCP.
#[test]
fn reserved_pairs_are_bound_ahead_and_reused_clean() {
    let br = Bridge::start(BridgeConfig {
        addresses: vec!["127.0.0.1".parse().unwrap()],
        port_min: 27000,
        port_max: 27003,
        workers: 1,
        quarantine: Duration::from_millis(300),
        reserve: 1,
        ..BridgeConfig::default()
    })
    .expect("bridge starts");
    assert_eq!(br.replenish(8), 0, "the reserve is full");
    assert_eq!(br.reserved(), 1);
    let c = call(&br, "127.0.0.1");
    assert_eq!(br.reserved(), 0, "the first leg took the reserved pair");
    br.splice(&[c.a.id, c.b.id], SpliceMode::Full).unwrap();
    br.set_dscp(c.b.id, Some(46)).unwrap();
    c.caller.send(c.a.rtp, &rtp(1, 1, b"old call"));
    assert_eq!(recv_tos(&c.callee.sock), Some(46 << 2));
    br.release(c.a.id).unwrap();
    br.release(c.b.id).unwrap();
    br.flush().unwrap();
    // Late packets of the old call reach the idle ports.
    for seq in 2..5 {
        c.caller.send(c.a.rtp, &rtp(1, seq, b"late"));
        c.callee.send(c.b.rtp, &rtp(2, seq, b"late"));
    }
    // Resting: not handed out during the quarantine, and reported as resting, not in use.
    let refused = br.provision(LegRequest::default()).unwrap_err().to_string();
    assert_eq!(refused, "no free ports (0 in use, 2 in quarantine)");
    assert_eq!(br.reserved(), 2);
    std::thread::sleep(Duration::from_millis(350));

    let caller = Peer::new("127.0.0.1");
    let callee = Peer::new("127.0.0.1");
    let a = br.provision(LegRequest::default()).unwrap();
    let b = br
        .provision(LegRequest {
            near: Some(a.id),
            ..Default::default()
        })
        .unwrap();
    let old: HashSet<_> = [c.a.rtp, c.b.rtp].into();
    assert_eq!(old, [a.rtp, b.rtp].into(), "the same pairs, reused");
    assert_eq!(br.reserved(), 0);
    br.set_remote(a.id, RemoteSpec::learning(None, Duration::from_secs(5)))
        .unwrap();
    br.set_remote(b.id, RemoteSpec::learning(None, Duration::from_secs(5)))
        .unwrap();
    br.splice(&[a.id, b.id], SpliceMode::Full).unwrap();
    br.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for leg in [a.id, b.id] {
        let n = br.stats(leg).unwrap().counters;
        assert_eq!(
            (n.received, n.packets_in),
            (0, 0),
            "nothing of the old call"
        );
    }
    // The new parties latch and talk both ways, unmarked.
    caller.send(a.rtp, &rtp(7, 1, b"new call"));
    let got = callee.drain();
    assert_eq!(
        got.len(),
        0,
        "the callee's side has not latched yet: no remote"
    );
    callee.send(b.rtp, &rtp(8, 1, b"answer"));
    assert_eq!(caller.drain().len(), 1);
    caller.send(a.rtp, &rtp(7, 2, b"new call"));
    assert_eq!(recv_tos(&callee.sock), Some(0));
    assert!(c.caller.drain().is_empty() && c.callee.drain().is_empty());
}
