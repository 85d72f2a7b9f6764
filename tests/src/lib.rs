//! Helpers for rtpedge's integration tests: real network namespaces joined by a veth pair, UDP
//! endpoints living inside them (with the received TOS / traffic class read through
//! `IP_RECVTOS` / `IPV6_RECVTCLASS`), a steady numbered stream and its collector, and a runner
//! for the operator interface `scripts/ebpf` bound to a private pin root.
//!
//! Everything a test creates is named after the process id and a per-process counter, so tests
//! run in parallel (and next to an operator's data plane) without sharing anything, and is
//! removed in `Drop`, also when the test fails.

use std::{
    fs,
    io::{self, IoSliceMut, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrLike as _, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Privilege gate, names, binaries
// ---------------------------------------------------------------------------------------------

/// Tests that need root fail in CI (CI runs as root, so a missing privilege is a broken set-up)
/// and skip loudly elsewhere. Returns whether the test may run.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (network namespaces, XDP) and CI must run as root");
    }
    // Written to the stderr handle, not with eprintln!, which the test harness captures: a
    // skipped test must be visible in a normal run.
    let _ = writeln!(
        io::stderr(),
        "\n*** SKIPPED {test}: needs root (network namespaces, XDP); run `sudo scripts/test` ***\n"
    );
    false
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A number unique within this process; with the process id it names a test's resources.
pub fn next_id() -> usize {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A pin root of its own under /sys/fs/bpf, never the operator's `/sys/fs/bpf/rtpedge`.
pub fn private_pin_root() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/rtpedge-t{}-{}",
        std::process::id(),
        next_id()
    ))
}

/// A pin root that is removed (with whatever got pinned there) when dropped.
pub struct PinRootGuard(pub PathBuf);

impl PinRootGuard {
    /// A fresh [`private_pin_root`].
    pub fn new() -> Self {
        Self(private_pin_root())
    }
}

impl Default for PinRootGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinRootGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `scripts/ebpf`, the operator interface the tests drive.
pub fn ebpf_script() -> PathBuf {
    workspace_root().join("scripts/ebpf")
}

/// The `rtpedge` binary cargo built next to this test binary (test binaries live in
/// `target/<profile>/deps/`, binaries in `target/<profile>/`). Panics with the command to run
/// when it is missing.
pub fn rtpedge_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("rtpedge");
    if !bin.is_file() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        panic!(
            "{} is missing: run `cargo build{} -p rtpedge` first (scripts/test does)",
            bin.display(),
            if release { " --release" } else { "" }
        );
    }
    bin
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Number of CPUs the kernel keeps per-CPU map slots for (an upper bound on how many per-CPU
/// token buckets a pinhole has).
pub fn possible_cpus() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    n.max(1) as u64
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct CmdOutput {
    /// The command line, for failure messages.
    pub cmdline: String,
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CmdOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The non-empty lines of standard error.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout\n{}--- stderr\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a command to completion and captures its output.
pub fn run(cmd: &mut Command) -> CmdOutput {
    let cmdline = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running `{cmdline}`: {e}"));
    CmdOutput {
        cmdline,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `ip ARGS`, panicking with its output on failure.
pub fn ip(args: &[&str]) -> String {
    let out = run(Command::new("ip").args(args));
    assert!(out.success(), "{out}");
    out.stdout
}

// ---------------------------------------------------------------------------------------------
// scripts/ebpf
// ---------------------------------------------------------------------------------------------

/// Runs `scripts/ebpf` against one pin root (and optionally with `--netns NS`), with
/// `RTPEDGE_BIN` set to the cargo-built binary.
#[derive(Clone, Debug)]
pub struct EbpfCli {
    pin_root: PathBuf,
    netns: Option<String>,
}

impl EbpfCli {
    /// The CLI on `pin_root`, in the caller's network namespace.
    pub fn new(pin_root: impl Into<PathBuf>) -> Self {
        Self {
            pin_root: pin_root.into(),
            netns: None,
        }
    }

    /// The same CLI operating in network namespace `ns` (`--netns NS`).
    pub fn with_netns(&self, ns: &str) -> Self {
        Self {
            pin_root: self.pin_root.clone(),
            netns: Some(ns.to_string()),
        }
    }

    /// The pin root.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Adds `scripts/ebpf --pin-root ROOT [--netns NS] ARGS` and the environment to `cmd`.
    fn append(&self, cmd: &mut Command, args: &[&str]) {
        mount_bpffs_once();
        cmd.arg("--pin-root").arg(&self.pin_root);
        if let Some(ns) = &self.netns {
            cmd.args(["--netns", ns]);
        }
        cmd.args(args)
            .env("RTPEDGE_BIN", rtpedge_bin())
            .env_remove("RTPEDGE_PIN_ROOT")
            .env_remove("RUST_LOG");
    }

    /// `scripts/ebpf --pin-root ROOT [--netns NS] ARGS`.
    pub fn run(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new(ebpf_script());
        self.append(&mut cmd, args);
        run(&mut cmd)
    }

    /// `ip netns exec NS scripts/ebpf --pin-root ROOT ARGS` (each call its own process).
    pub fn run_in_ip_netns_exec(&self, ns: &str, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(ebpf_script());
        self.append(&mut cmd, args);
        run(&mut cmd)
    }

    /// Runs `ARGS` and returns standard output, panicking with everything on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.success(), "{out}");
        out.stdout
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        parse_json(&self.ok(&["status", "--json"]))
    }

    /// The global counters of `status --json`.
    pub fn counters(&self) -> Counters {
        Counters(self.status()["counters"].clone())
    }

    /// `pinholes --json`.
    pub fn pinholes(&self) -> Vec<Value> {
        match parse_json(&self.ok(&["pinholes", "--json"])) {
            Value::Array(a) => a,
            other => panic!("pinholes --json is not an array: {other}"),
        }
    }

    /// The pinhole on `local` from `pinholes --json`; panics if there is none.
    pub fn pinhole(&self, local: SocketAddr) -> Pinhole {
        let key = local.to_string();
        let all = self.pinholes();
        let found = all
            .iter()
            .find(|p| p["local"] == key.as_str())
            .unwrap_or_else(|| panic!("no pinhole {key} in {all:?}"));
        Pinhole(found.clone())
    }
}

/// Mounts bpffs on /sys/fs/bpf if nothing has yet (scripts/setup normally has). The CLI would
/// mount it itself, but two first loads running in parallel would both mount it, one on top of
/// the other, and the pins under the lower one would vanish from sight.
fn mount_bpffs_once() {
    static MOUNTED: Once = Once::new();
    MOUNTED.call_once(|| {
        let bpffs = Path::new("/sys/fs/bpf");
        let is_bpffs = nix::sys::statfs::statfs(bpffs)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
        if !is_bpffs {
            nix::mount::mount(
                Some("bpf"),
                bpffs,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap_or_else(|e| panic!("mounting bpffs on {}: {e}", bpffs.display()));
        }
    });
}

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

/// The `counters` object of `status --json`.
#[derive(Clone, Debug)]
pub struct Counters(pub Value);

impl Counters {
    /// One counter; panics if the key is missing (the keys are a contract).
    pub fn get(&self, name: &str) -> u64 {
        self.0[name]
            .as_u64()
            .unwrap_or_else(|| panic!("counter {name:?} missing in {}", self.0))
    }
}

/// One entry of `pinholes --json`.
#[derive(Clone, Debug)]
pub struct Pinhole(pub Value);

impl Pinhole {
    /// A numeric field; panics if it is missing.
    pub fn num(&self, key: &str) -> u64 {
        self.0[key]
            .as_u64()
            .unwrap_or_else(|| panic!("pinhole field {key:?} missing in {}", self.0))
    }

    /// A string field, `None` if it is null or missing.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0[key].as_str()
    }

    /// Packets the pinhole judged: passed plus every kind of drop.
    pub fn judged(&self) -> u64 {
        self.num("packets")
            + self.num("dropped_closed")
            + self.num("dropped_wrong_source")
            + self.num("dropped_rate_limited")
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces and veth
// ---------------------------------------------------------------------------------------------

/// MAC of the sending end.
pub const TX_MAC: &str = "02:72:74:00:00:01";
/// MAC of the receiving end (the one with XDP).
pub const RX_MAC: &str = "02:72:74:00:00:02";
/// The sender's address.
pub const TX_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// A second address of the sender (a wrong source for exact and address policies).
pub const TX_V4_OTHER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
/// The receiver's address.
pub const RX_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// The sender's IPv6 address.
pub const TX_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
/// A second IPv6 address of the sender.
pub const TX_V6_OTHER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 3);
/// The receiver's IPv6 address.
pub const RX_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);

/// Two network namespaces joined by a veth pair: `tx_ns`/`tx_if` sends, `rx_ns`/`rx_if`
/// receives and is where the data plane attaches, with a pin root of its own.
///
/// Addresses are static and neighbours are permanent entries, so no ARP or neighbour discovery
/// ever delays or drops the first packets. Dropping it unloads the data plane (if loaded),
/// deletes both namespaces (and with them the veth pair) and removes the pin root.
pub struct Topology {
    /// Sender's namespace.
    pub tx_ns: String,
    /// Receiver's namespace.
    pub rx_ns: String,
    /// Sender's veth end (in `tx_ns`).
    pub tx_if: String,
    /// Receiver's veth end (in `rx_ns`).
    pub rx_if: String,
    /// `scripts/ebpf` on this topology's pin root, operating in `rx_ns` (`--netns`).
    pub ebpf: EbpfCli,
    loaded: bool,
}

impl Topology {
    /// Creates the namespaces, the veth pair, addresses and neighbours. Nothing is loaded yet.
    pub fn new() -> Self {
        let pid = std::process::id();
        let n = next_id();
        let rx_ns = format!("rtpedge-t{pid}-{n}-rx");
        let topo = Topology {
            tx_ns: format!("rtpedge-t{pid}-{n}-tx"),
            rx_ns: rx_ns.clone(),
            tx_if: format!("rt{pid}n{n}t"),
            rx_if: format!("rt{pid}n{n}r"),
            ebpf: EbpfCli::new(format!("/sys/fs/bpf/rtpedge-t{pid}-{n}")).with_netns(&rx_ns),
            loaded: false,
        };
        assert!(
            topo.rx_if.len() <= 15,
            "interface name {} too long",
            topo.rx_if
        );
        // From here on, `Drop` cleans up whatever part of the set-up succeeded.
        let (tx, rx) = (topo.tx_ns.as_str(), topo.rx_ns.as_str());
        let (tx_if, rx_if) = (topo.tx_if.as_str(), topo.rx_if.as_str());
        ip(&["netns", "add", tx]);
        ip(&["netns", "add", rx]);
        ip(&[
            "link", "add", tx_if, "address", TX_MAC, "netns", tx, "type", "veth", "peer", "name",
            rx_if, "address", RX_MAC, "netns", rx,
        ]);
        let sides = [
            (
                tx,
                tx_if,
                vec![TX_V4, TX_V4_OTHER],
                vec![TX_V6, TX_V6_OTHER],
            ),
            (rx, rx_if, vec![RX_V4], vec![RX_V6]),
        ];
        for (ns, dev, v4s, v6s) in &sides {
            for a in v4s {
                ip(&["-n", ns, "addr", "add", &format!("{a}/24"), "dev", dev]);
            }
            for a in v6s {
                let cidr = format!("{a}/64");
                ip(&["-n", ns, "addr", "add", &cidr, "dev", dev, "nodad"]);
            }
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let neighbours: [(&str, &str, IpAddr, &str); 6] = [
            (tx, tx_if, RX_V4.into(), RX_MAC),
            (tx, tx_if, RX_V6.into(), RX_MAC),
            (rx, rx_if, TX_V4.into(), TX_MAC),
            (rx, rx_if, TX_V4_OTHER.into(), TX_MAC),
            (rx, rx_if, TX_V6.into(), TX_MAC),
            (rx, rx_if, TX_V6_OTHER.into(), TX_MAC),
        ];
        for (ns, dev, addr, mac) in neighbours {
            let addr = addr.to_string();
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                &addr,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        topo
    }

    /// `scripts/ebpf --netns RX load --iface RX_IF --mode native`; returns its output.
    pub fn load_native(&mut self) -> String {
        // Marked first: a load that fails half-way is still cleaned up.
        self.loaded = true;
        self.ebpf
            .ok(&["load", "--iface", &self.rx_if, "--mode", "native"])
    }

    /// Records whether the data plane is loaded on this topology, for a test that loads or
    /// unloads it by other means than [`Topology::load_native`] (`Drop` unloads it if so).
    pub fn set_loaded(&mut self, loaded: bool) {
        self.loaded = loaded;
    }

    /// `ip -n RX link show RX_IF`.
    pub fn rx_link(&self) -> String {
        ip(&["-n", &self.rx_ns, "link", "show", &self.rx_if])
    }

    /// Whether the receiving interface has an XDP program attached.
    pub fn rx_has_xdp(&self) -> bool {
        let link = self.rx_link();
        link.split_whitespace().any(|w| w.starts_with("xdp")) || link.contains("prog/xdp")
    }

    /// A UDP socket bound to `local` in the sender's namespace.
    pub fn tx_socket(&self, local: SocketAddr) -> UdpEndpoint {
        UdpEndpoint::bind(&self.tx_ns, local)
    }

    /// A UDP socket bound to `local` in the receiver's namespace.
    pub fn rx_socket(&self, local: SocketAddr) -> UdpEndpoint {
        UdpEndpoint::bind(&self.rx_ns, local)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.loaded {
            let out = self.ebpf.run(&["unload", "--iface", &self.rx_if]);
            if !out.success() {
                eprintln!("cleanup: {out}");
            }
        }
        for ns in [&self.rx_ns, &self.tx_ns] {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        // Whatever the unload left behind (e.g. it failed, or the test killed the interface).
        if self.ebpf.pin_root().exists() {
            let _ = fs::remove_dir_all(self.ebpf.pin_root());
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (`/run/netns/<ns>`). Sockets
/// created there belong to that namespace for good and may be used from any thread.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/run/netns").join(ns);
    thread::scope(|s| {
        s.spawn(|| {
            let file =
                fs::File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {}: {e}", path.display()));
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

// ---------------------------------------------------------------------------------------------
// UDP endpoints
// ---------------------------------------------------------------------------------------------

/// Payload size of every test packet: an RTP header plus 20 ms of G.711.
pub const PAYLOAD_LEN: usize = 172;

/// Bytes of a test packet's frame as XDP sees it (Ethernet + IP + UDP + payload).
pub fn frame_len(ipv4: bool) -> u64 {
    let ip = if ipv4 { 20 } else { 40 };
    (14 + ip + 8 + PAYLOAD_LEN) as u64
}

/// A test payload carrying sequence number `seq` in its first 8 bytes.
pub fn numbered_payload(seq: u64) -> Vec<u8> {
    let mut p = vec![0xd5u8; PAYLOAD_LEN];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

/// A received datagram.
#[derive(Clone, Debug)]
pub struct Datagram {
    /// Source address and port.
    pub from: SocketAddr,
    /// Payload.
    pub payload: Vec<u8>,
    /// The TOS byte (IPv4) or traffic class (IPv6) it arrived with.
    pub tos: Option<u8>,
}

impl Datagram {
    /// The sequence number of a [`numbered_payload`].
    pub fn seq(&self) -> u64 {
        let b: [u8; 8] = self.payload[..8].try_into().expect("numbered payload");
        u64::from_be_bytes(b)
    }
}

/// A UDP socket bound inside a network namespace, reporting the TOS / traffic class of what it
/// receives.
#[derive(Debug)]
pub struct UdpEndpoint {
    sock: UdpSocket,
    local: SocketAddr,
}

impl UdpEndpoint {
    /// Binds `local` in namespace `ns`, with TOS reporting on and a large receive buffer (so a
    /// briefly descheduled reader loses nothing).
    pub fn bind(ns: &str, local: SocketAddr) -> Self {
        let sock = in_netns(ns, || UdpSocket::bind(local))
            .unwrap_or_else(|e| panic!("binding {local} in {ns}: {e}"));
        if local.is_ipv4() {
            setsockopt(&sock, sockopt::IpRecvTos, &true).expect("IP_RECVTOS");
        } else {
            setsockopt(&sock, sockopt::Ipv6RecvTClass, &true).expect("IPV6_RECVTCLASS");
        }
        setsockopt(&sock, sockopt::RcvBufForce, &(8 << 20)).expect("SO_RCVBUFFORCE");
        Self { sock, local }
    }

    /// The bound address.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sets the TOS byte (IPv4, `IP_TOS`) or traffic class (IPv6, `IPV6_TCLASS`) of what this
    /// socket sends, ECN bits included.
    pub fn set_tos(&self, tos: u8) {
        if self.local.is_ipv4() {
            setsockopt(&self.sock, sockopt::Ipv4Tos, &libc::c_int::from(tos)).expect("IP_TOS");
        } else {
            setsockopt(&self.sock, sockopt::Ipv6TClass, &libc::c_int::from(tos))
                .expect("IPV6_TCLASS");
        }
    }

    /// Sends one datagram.
    pub fn send_to(&self, payload: &[u8], to: SocketAddr) {
        let n = self
            .sock
            .send_to(payload, to)
            .unwrap_or_else(|e| panic!("sending from {} to {to}: {e}", self.local));
        assert_eq!(n, payload.len());
    }

    /// Sends numbered packets `seqs` back to back.
    pub fn send_numbered(&self, to: SocketAddr, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            self.send_to(&numbered_payload(seq), to);
        }
    }

    fn recv_with(&self, flags: MsgFlags) -> io::Result<Datagram> {
        let mut buf = vec![0u8; 2048];
        let mut cmsg = nix::cmsg_space!(libc::c_int, libc::c_int);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg =
            recvmsg::<SockaddrStorage>(self.sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags)
                .map_err(io::Error::from)?;
        let mut tos = None;
        for c in msg.cmsgs().map_err(io::Error::from)? {
            match c {
                ControlMessageOwned::Ipv4Tos(t) => tos = Some(t),
                ControlMessageOwned::Ipv6TClass(t) => tos = Some(t as u8),
                _ => {}
            }
        }
        let from = msg
            .address
            .and_then(|a| match a.family() {
                Some(nix::sys::socket::AddressFamily::Inet) => {
                    a.as_sockaddr_in().map(|s| SocketAddr::from(*s))
                }
                Some(nix::sys::socket::AddressFamily::Inet6) => {
                    a.as_sockaddr_in6().map(|s| SocketAddr::from(*s))
                }
                _ => None,
            })
            .expect("datagram with an IP source");
        let len = msg.bytes;
        buf.truncate(len);
        Ok(Datagram {
            from,
            payload: buf,
            tos,
        })
    }

    /// The next datagram, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Datagram> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("SO_RCVTIMEO");
        match self.recv_with(MsgFlags::empty()) {
            Ok(d) => Some(d),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("receiving on {}: {e}", self.local),
        }
    }

    /// Receives until `n` datagrams arrived or `timeout` passed; returns what arrived.
    pub fn recv_n(&self, n: usize, timeout: Duration) -> Vec<Datagram> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv(left) {
                Some(d) => out.push(d),
                None => break,
            }
        }
        out
    }

    /// Everything already queued on the socket, without waiting.
    pub fn queued(&self) -> Vec<Datagram> {
        let mut out = Vec::new();
        loop {
            match self.recv_with(MsgFlags::MSG_DONTWAIT) {
                Ok(d) => out.push(d),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("receiving on {}: {e}", self.local),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Steady stream and collector
// ---------------------------------------------------------------------------------------------

/// A sender thread streaming numbered packets 0, 1, 2, ... at a steady pace.
pub struct Stream {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    /// Starts sending from `from` to `to`, one packet per `interval`.
    pub fn start(from: UdpEndpoint, to: SocketAddr, interval: Duration) -> Self {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (sent, stop) = (sent.clone(), stop.clone());
            thread::spawn(move || {
                let mut seq = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    from.send_to(&numbered_payload(seq), to);
                    seq += 1;
                    sent.store(seq, Ordering::SeqCst);
                    thread::sleep(interval);
                }
            })
        };
        Self {
            sent,
            stop,
            thread: Some(thread),
        }
    }

    /// How many packets have been sent completely: sequence numbers `0..sent()` have left the
    /// socket; number `sent()` may be in the middle of being sent, and every later one starts
    /// after this call.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops the sender; returns how many packets it sent.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.sent()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("stream sender panicked");
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A receiver thread recording the sequence numbers that arrive on an endpoint.
pub struct Collector {
    seqs: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Starts receiving on `on`.
    pub fn start(on: UdpEndpoint) -> Self {
        let seqs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seqs, stop) = (seqs.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(d) = on.recv(Duration::from_millis(20)) {
                        seqs.lock().unwrap().push(d.seq());
                    }
                }
                let rest = on.queued();
                seqs.lock().unwrap().extend(rest.iter().map(Datagram::seq));
            })
        };
        Self {
            seqs,
            stop,
            thread: Some(thread),
        }
    }

    /// The sequence numbers received so far, in arrival order.
    pub fn received(&self) -> Vec<u64> {
        self.seqs.lock().unwrap().clone()
    }

    /// Waits until `cond` holds for what was received (or `timeout` passes).
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&[u64]) -> bool) -> bool {
        wait_until(timeout, || cond(&self.seqs.lock().unwrap()))
    }

    /// Stops receiving (after taking what is already queued); returns every sequence number.
    pub fn stop(mut self) -> Vec<u64> {
        self.halt();
        self.received()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("collector panicked");
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.halt();
    }
}
