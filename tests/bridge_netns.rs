//! The media edge as deployed: the bridge runs inside a network namespace (the edge host) with
//! the XDP data plane attached to its interface, and phones in another namespace reach it over
//! a veth pair. The pinholes admit exactly the legs' signalled remotes; the bridge splices the
//! legs. Shows the whole path: XDP (default deny, pinholes, DSCP) → bridge (latching, splicing,
//! DSCP on sent media) → the other phone, and that an injector is stopped by XDP before the
//! bridge ever sees it.
//!
//! Needs root (fails under `CI` without it, skips loudly elsewhere) and the `rtpedge` binary.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use rtpedge_bridge::{Bridge, BridgeConfig, LegRequest, RemoteSpec, SpliceMode};
use rtpedge_tests::{RX_V4, TX_V4, TX_V4_OTHER, Topology, in_netns, require_root};

const TIMEOUT: Duration = Duration::from_secs(5);

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// An RTP packet (PT 0) with a recognisable payload.
fn rtp(ssrc: u32, seq: u16, tag: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(tag, 160));
    p
}

#[test]
fn bridge_behind_xdp_in_a_namespace_splices_a_call() {
    if !require_root("bridge_behind_xdp_in_a_namespace_splices_a_call") {
        return;
    }
    let mut topo = Topology::new();
    topo.load_native();
    let edge = topo.rx_ns.clone();
    let bridge = in_netns(&edge, || {
        Bridge::start(BridgeConfig {
            addresses: vec![RX_V4.into()],
            port_min: 30000,
            port_max: 30999,
            workers: 2,
            ..BridgeConfig::default()
        })
    })
    .expect("bridge starts in the edge namespace");
    // Sockets belong to the namespace of the thread that creates them: provision there.
    let (a, b) = in_netns(&edge, || {
        let a = bridge.provision(LegRequest::default()).expect("leg a");
        let b = bridge
            .provision(LegRequest {
                near: Some(a.id),
                ..Default::default()
            })
            .expect("leg b");
        (a, b)
    });
    let caller = v4(TX_V4, 4000);
    let callee = v4(TX_V4_OTHER, 5000);
    bridge.set_remote(a.id, RemoteSpec::exact(caller)).unwrap();
    bridge.set_remote(b.id, RemoteSpec::exact(callee)).unwrap();
    for (local, remote) in [(a.rtp, caller), (b.rtp, callee)] {
        topo.ebpf.ok(&[
            "pinhole",
            "open",
            "--local",
            &local.to_string(),
            "--remote",
            &remote.to_string(),
            "--policy",
            "exact",
            "--dscp",
            "46",
        ]);
    }
    let caller_sock = topo.tx_socket(caller);
    let callee_sock = topo.tx_socket(callee);

    // Admitted by XDP, dropped by the bridge: not spliced yet.
    caller_sock.send_to(&rtp(1, 1, 0xa1), a.rtp);
    assert!(callee_sock.recv(Duration::from_millis(300)).is_none());
    assert_eq!(bridge.stats(a.id).unwrap().counters.dropped_not_spliced, 1);

    bridge.splice(&[a.id, b.id], SpliceMode::Full).unwrap();
    bridge.set_dscp(b.id, Some(46)).unwrap();
    let sent = rtp(1, 2, 0xa2);
    caller_sock.send_to(&sent, a.rtp);
    let got = callee_sock.recv(TIMEOUT).expect("media reaches the callee");
    assert_eq!(got.payload, sent, "payload unchanged end to end");
    assert_eq!(got.from, b.rtp, "sent from the callee-facing leg");
    assert_eq!(got.tos, Some(46 << 2), "marked EF on the way out");
    let back = rtp(2, 1, 0xb1);
    callee_sock.send_to(&back, b.rtp);
    let got = caller_sock.recv(TIMEOUT).expect("media reaches the caller");
    assert_eq!(got.payload, back);
    assert_eq!(got.from, a.rtp);

    // An injector on the caller's host, another port: XDP drops it; the bridge never sees it.
    let received_before = bridge.stats(a.id).unwrap().counters.received;
    let injector = topo.tx_socket(v4(TX_V4, 4002));
    for seq in 3..13 {
        injector.send_to(&rtp(1, seq, 0xee), a.rtp);
    }
    assert!(callee_sock.recv(Duration::from_millis(300)).is_none());
    assert_eq!(
        bridge.stats(a.id).unwrap().counters.received,
        received_before
    );
    assert_eq!(topo.ebpf.pinhole(a.rtp).num("dropped_wrong_source"), 10);

    // Unsplice: XDP still admits, the bridge stops forwarding.
    let splice = bridge.stats(a.id).unwrap().splice.expect("spliced");
    bridge.unsplice(splice).unwrap();
    caller_sock.send_to(&rtp(1, 20, 0xa3), a.rtp);
    assert!(callee_sock.recv(Duration::from_millis(300)).is_none());

    // Pinholes closed (BYE): XDP stops it before the bridge.
    bridge.splice(&[a.id, b.id], SpliceMode::Full).unwrap();
    topo.ebpf
        .ok(&["pinhole", "close", "--local", &a.rtp.to_string()]);
    let received_before = bridge.stats(a.id).unwrap().counters.received;
    caller_sock.send_to(&rtp(1, 21, 0xa4), a.rtp);
    assert!(callee_sock.recv(Duration::from_millis(300)).is_none());
    assert_eq!(
        bridge.stats(a.id).unwrap().counters.received,
        received_before
    );
    drop(bridge);
}
