//! Recorder forks and atomic re-splicing with real UDP sockets on loopback, with two workers
//! (so a leg provisioned elsewhere must be moved to the splice's worker first).

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use rtpedge_bridge::{Bridge, BridgeConfig, Fork, LegRequest, RemoteSpec, SpliceMode};

fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend((0..160u32).map(|i| (i ^ seq as u32 ^ ssrc) as u8));
    p
}

struct Peer(UdpSocket);

impl Peer {
    fn new() -> Self {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        Peer(s)
    }
    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
    fn send(&self, to: SocketAddr, p: &[u8]) {
        self.0.send_to(p, to).unwrap();
    }
    fn drain(&self) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.0.recv_from(&mut buf) {
            out.push((buf[..n].to_vec(), from));
        }
        out
    }
}

#[test]
fn fork_and_resplice_across_workers() {
    let br = Bridge::start(BridgeConfig {
        addresses: vec!["127.0.0.1".parse().unwrap()],
        port_min: 26000,
        port_max: 26999,
        workers: 2,
        media_timeout: Duration::from_secs(30),
        ..BridgeConfig::default()
    })
    .unwrap();
    let (pa, pb, pc, rec) = (Peer::new(), Peer::new(), Peer::new(), Peer::new());
    let a = br.provision(LegRequest::default()).unwrap();
    let b = br
        .provision(LegRequest {
            near: Some(a.id),
            ..Default::default()
        })
        .unwrap();
    for (leg, peer) in [(a.id, &pa), (b.id, &pb)] {
        br.set_remote(leg, RemoteSpec::exact(peer.addr())).unwrap();
    }
    let s1 = br.splice(&[a.id, b.id], SpliceMode::Full).unwrap();
    // The fork: A's packets also go to the recorder, from A's leg, byte for byte.
    br.set_fork(a.id, Some(Fork::to(rec.addr()))).unwrap();
    pa.send(a.rtp, &rtp(0xA, 1));
    assert_eq!(pb.drain(), vec![(rtp(0xA, 1), b.rtp)]);
    assert_eq!(rec.drain(), vec![(rtp(0xA, 1), a.rtp)]);
    pb.send(b.rtp, &rtp(0xB, 1));
    assert_eq!(pa.drain().len(), 1);
    assert!(rec.drain().is_empty(), "B's leg does not fork");
    assert_eq!(br.stats(a.id).unwrap().counters.forked, 1);
    // A third leg on the other worker (no `near`) joins in one step.
    let c = br.provision(LegRequest::default()).unwrap();
    br.set_remote(c.id, RemoteSpec::exact(pc.addr())).unwrap();
    let ids = br
        .resplice(&[s1], &[(vec![a.id, b.id, c.id], SpliceMode::Full)])
        .unwrap();
    assert_eq!(ids.len(), 1);
    pc.send(c.rtp, &rtp(0xC, 1));
    assert_eq!(pa.drain(), vec![(rtp(0xC, 1), a.rtp)]);
    assert_eq!(pb.drain(), vec![(rtp(0xC, 1), b.rtp)]);
    pa.send(a.rtp, &rtp(0xA, 2));
    assert_eq!(pc.drain(), vec![(rtp(0xA, 2), c.rtp)]);
    assert_eq!(pb.drain().len(), 1);
    assert_eq!(rec.drain().len(), 1, "the fork survives the re-splice");
    // A refused resplice changes nothing: the old splice is still the one.
    assert!(br.resplice(&[s1], &[]).is_err(), "s1 is gone");
    pb.send(b.rtp, &rtp(0xB, 2));
    assert_eq!(pa.drain().len(), 1);
    assert_eq!(pc.drain().len(), 1);
    // Split: A with C; B alone.
    br.resplice(&ids, &[(vec![a.id, c.id], SpliceMode::Full)])
        .unwrap();
    pb.send(b.rtp, &rtp(0xB, 3));
    assert!(pa.drain().is_empty() && pc.drain().is_empty(), "B isolated");
    pa.send(a.rtp, &rtp(0xA, 3));
    assert_eq!(pc.drain().len(), 1);
    assert!(pb.drain().is_empty());
    // Stopping the fork.
    rec.drain();
    br.set_fork(a.id, None).unwrap();
    pa.send(a.rtp, &rtp(0xA, 4));
    assert_eq!(pc.drain().len(), 1);
    assert!(rec.drain().is_empty());
}
