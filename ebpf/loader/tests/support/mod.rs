//! Test support: a frame builder for crafted packets and the privilege gate.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

/// Tests that need root fail in CI (CI runs as root, so a missing privilege is a broken set-up)
/// and skip loudly elsewhere.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (BPF_PROG_TEST_RUN) and CI must run as root");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!`, and a skip must
    // be visible.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED {test}: needs root (BPF_PROG_TEST_RUN); run `sudo scripts/test` ***\n"
    );
    false
}

pub fn ipv4_checksum(h: &[u8]) -> u16 {
    rtpedge_common::logic::ipv4_header_checksum(h)
}

/// A UDP frame under construction.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub vlan: Option<u16>,
    pub tos: u8,
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers before UDP: (next-header code of this header, total bytes).
    pub ipv6_ext: Vec<(u8, usize)>,
    pub ipv4_frag: u16,
    pub ipv6_flow: u32,
    pub payload: Vec<u8>,
    pub protocol: u8,
}

impl Frame {
    pub fn udp(src: &str, dst: &str) -> Self {
        Frame {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            vlan: None,
            tos: 0,
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            ipv4_frag: 0x4000, // DF
            ipv6_flow: 0x12345,
            payload: (0..172u8).collect(), // RTP-sized: 12-byte header + 160 bytes G.711
            protocol: 17,
        }
    }
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }
    pub fn options(mut self, words: usize) -> Self {
        // NOPs ending in an End of Options list, padded to 4-byte words.
        let mut o = vec![1u8; words * 4];
        if let Some(last) = o.last_mut() {
            *last = 0;
        }
        self.ipv4_options = o;
        self
    }
    pub fn ext(mut self, code: u8, len: usize) -> Self {
        self.ipv6_ext.push((code, len));
        self
    }
    pub fn frag(mut self, v: u16) -> Self {
        self.ipv4_frag = v;
        self
    }
    pub fn protocol(mut self, p: u8) -> Self {
        self.protocol = p;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        let v4 = self.dst.is_ipv4();
        if let Some(id) = self.vlan {
            f.extend([0x81, 0x00]);
            f.extend(id.to_be_bytes());
        }
        f.extend(if v4 { [0x08, 0x00] } else { [0x86, 0xdd] });
        let udp_len = 8 + self.payload.len();
        let mut udp = Vec::new();
        udp.extend(self.src.port().to_be_bytes());
        udp.extend(self.dst.port().to_be_bytes());
        udp.extend((udp_len as u16).to_be_bytes());
        udp.extend([0, 0]); // checksum optional over IPv4; the program never checks it
        udp.extend(&self.payload);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 5 + self.ipv4_options.len() / 4;
                let tot = ihl * 4 + udp.len();
                let mut h = vec![(4 << 4) | ihl as u8, self.tos];
                h.extend((tot as u16).to_be_bytes());
                h.extend([0x1c, 0x46]);
                h.extend(self.ipv4_frag.to_be_bytes());
                h.extend([64, self.protocol, 0, 0]);
                h.extend(s.octets());
                h.extend(d.octets());
                h.extend(&self.ipv4_options);
                let c = ipv4_checksum(&h).to_be_bytes();
                h[10] = c[0];
                h[11] = c[1];
                f.extend(h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ext = Vec::new();
                let codes: Vec<u8> = self.ipv6_ext.iter().map(|e| e.0).collect();
                for (i, (code, len)) in self.ipv6_ext.iter().enumerate() {
                    let next = codes.get(i + 1).copied().unwrap_or(self.protocol);
                    let mut e = vec![0u8; *len];
                    e[0] = next;
                    if *code == 44 {
                        // fragment header: keep the offset from `len` field use: first fragment
                    } else {
                        e[1] = (*len / 8 - 1) as u8;
                    }
                    ext.extend(e);
                }
                let word = (6u32 << 28) | ((self.tos as u32) << 20) | self.ipv6_flow;
                f.extend(word.to_be_bytes());
                f.extend(((ext.len() + udp.len()) as u16).to_be_bytes());
                f.push(codes.first().copied().unwrap_or(self.protocol));
                f.push(64);
                f.extend(s.octets());
                f.extend(d.octets());
                f.extend(ext);
            }
            _ => panic!("mixed families"),
        }
        f.extend(udp);
        f
    }
}

/// Offset of the IP header in a frame built with `vlan`.
pub fn l3_offset(vlan: bool) -> usize {
    if vlan { 18 } else { 14 }
}
