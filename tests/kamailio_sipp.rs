//! End to end with real peers: Kamailio 5.6 with its rtpengine module, unchanged, drives rtpedge
//! over the ng protocol, and sipp places and answers calls through that proxy, playing G.711
//! (the `g711a.pcap` Debian's sip-tester ships) in both directions through rtpedge's legs.
//!
//! Topology (every box a network namespace of this test; a Linux bridge in `sw` joins them):
//!
//! ```text
//!   caller 10.88.7.1 (sipp UAC) ─┐
//!   callee 10.88.7.2 (sipp UAS) ─┤
//!   third  10.88.7.66 (injector)─┼─ br0 (sw)
//!   edge   10.88.7.10 ───────────┘   Kamailio :5060 ─ng 127.0.0.1:2223─ rtpedge (XDP on its veth)
//! ```
//!
//! Checked: (1) sipp's calls succeed (UAC and UAS exit 0); (2) RTP reaches each side from the
//! edge's media address and from ports in rtpedge's range, never directly from the other phone
//! (captured with an AF_PACKET socket on each phone's interface); (3) RTP from a third address
//! to a live call's port is dropped by XDP (`wrong_source`, the pinhole's
//! `dropped_wrong_source`) and never reaches the callee; (4) after BYE nothing passes, the
//! pinholes are closed (`closed`), and after the daemon stops nothing passes either
//! (`no_pinhole`); (5) one CDR per call sipp placed, ended by `delete`, answered, with packets
//! both ways; (6) ng `query` during a call reports non-zero packets.
//!
//! Needs root and the packages `kamailio` and `sip-tester` (fails under `CI` without them, skips
//! loudly elsewhere) and the `rtpedge` binary (`scripts/test` builds it).

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs::{self, File},
    io::Write as _,
    mem,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use rtpedge::ng::{NgClient, Value};
use rtpedge_tests::{
    Counters, EbpfCli, UdpEndpoint, in_netns, ip, next_id, require_root, rtpedge_bin, run,
    wait_until, workspace_root,
};

const CALLER: Ipv4Addr = Ipv4Addr::new(10, 88, 7, 1);
const CALLEE: Ipv4Addr = Ipv4Addr::new(10, 88, 7, 2);
const EDGE: Ipv4Addr = Ipv4Addr::new(10, 88, 7, 10);
const THIRD: Ipv4Addr = Ipv4Addr::new(10, 88, 7, 66);
const SIP_PORT: u16 = 5060;
/// rtpedge's ng socket, on the edge namespace's loopback.
const NG: &str = "127.0.0.1:2223";
/// rtpedge's media port range.
const PORT_LO: u16 = 40000;
const PORT_HI: u16 = 40099;
/// Calls sipp places, all at once (each plays the pcap, about 7 s).
const CALLS: usize = 4;
/// How long the UAC holds each call after ACK before its BYE: longer than the pcap lasts.
const HOLD_MS: u64 = 8000;
/// The G.711 A-law RTP stream Debian's sip-tester ships.
const PCAP: &str = "/usr/share/sip-tester/g711a.pcap";
/// Packets the third address injects into a live call.
const INJECTED: u64 = 50;
/// Packets sent to a call's ports after its BYE (each way), and after the daemon stopped.
const AFTER_BYE: u64 = 50;
/// SSRCs of the test's own packets, so a capture can tell them from sipp's.
const INJECT_SSRC: u32 = 0x7e1d_0bad;
const AFTER_BYE_SSRC: u32 = 0x7e1d_0b7e;
/// Generous bound for anything the test waits for.
const TIMEOUT: Duration = Duration::from_secs(20);

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

// ---------------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------------

/// A test that cannot run here: fails under `CI` (which installs everything with scripts/setup
/// and runs as root), skips loudly elsewhere.
fn cannot_run(test: &str, why: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}; CI runs scripts/setup, which installs it");
    }
    // Straight to the stderr handle: the harness captures eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: {why} (run scripts/setup, then `sudo scripts/test`) ***\n"
    );
    false
}

/// An executable on PATH or in the sbin directories (kamailio lives in /usr/sbin).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Kamailio's rtpengine module (multiarch path on Debian).
fn rtpengine_module() -> Option<PathBuf> {
    let dirs = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain([PathBuf::from("/usr/lib"), PathBuf::from("/usr/local/lib")]);
    dirs.map(|d| d.join("kamailio/modules/rtpengine.so"))
        .find(|p| p.is_file())
}

struct Tools {
    kamailio: PathBuf,
    sipp: PathBuf,
}

/// Root, Kamailio with its rtpengine module, sipp with pcap play, and the pcap.
fn prerequisites(test: &str) -> Option<Tools> {
    if !require_root(test) {
        return None;
    }
    let (Some(kamailio), Some(_module)) = (find_program("kamailio"), rtpengine_module()) else {
        cannot_run(
            test,
            "needs Kamailio and its rtpengine module (Debian package kamailio)",
        );
        return None;
    };
    let Some(sipp) = find_program("sipp") else {
        cannot_run(test, "needs sipp (Debian package sip-tester)");
        return None;
    };
    let version = run(Command::new(&sipp).arg("-v"));
    if !version.stdout.contains("PCAP") && !version.stderr.contains("PCAP") {
        cannot_run(
            test,
            "needs a sipp built with pcap play (Debian's sip-tester)",
        );
        return None;
    }
    if !Path::new(PCAP).is_file() {
        cannot_run(test, &format!("needs {PCAP} (Debian package sip-tester)"));
        return None;
    }
    Some(Tools { kamailio, sipp })
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A process started by the test in its own process group, with its output in a log file.
/// Stopped (SIGTERM, then SIGKILL for the whole group) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// `ip netns exec NS PROGRAM ARGS`, in `dir`, output to `dir/NAME.log`.
    fn spawn_in(ns: &str, name: &'static str, dir: &Path, program: &Path, args: &[&str]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new("ip");
        // SAFETY: prctl is async-signal-safe. If the test process dies without its Drop (a
        // harness timeout's SIGKILL), the process goes with it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        Proc {
            name,
            child,
            log,
            status: None,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Whether the process has exited, without reaping it (its pid, and so its process group
    /// id, stays reserved until [`Proc::reap`]).
    fn exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
        // SAFETY: waitid on our own child with a valid out-pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid for a WEXITED report; 0 when nothing has changed.
        r == 0 && unsafe { info.si_pid() } != 0
    }

    /// Kills what is left of the group and collects the exit status.
    fn reap(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        // The leader is a zombie at worst: the group id cannot have been reused.
        // SAFETY: kill has no memory preconditions; the group is the one this test created.
        unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
        let s = self.child.wait().expect("waiting for a child");
        self.status = Some(s);
        s
    }

    /// Waits for the process to exit by itself.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if wait_until(timeout, || self.exited()) {
            Some(self.reap())
        } else {
            None
        }
    }

    /// SIGTERM to the leader, SIGKILL to the group after `grace`.
    fn stop(&mut self, grace: Duration) -> ExitStatus {
        if self.status.is_none() && !self.exited() {
            // SAFETY: as in reap.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            wait_until(grace, || self.exited());
        }
        self.reap()
    }

    /// The log's last `lines` lines, for failure messages.
    fn tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- {} ({}), last {} lines:\n{}\n",
            self.name,
            self.log.display(),
            all.len() - from,
            all[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Capture on a phone's interface
// ---------------------------------------------------------------------------------------------

/// One UDP datagram a phone's interface received.
#[derive(Clone, Copy, Debug)]
struct Seen {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    /// The RTP SSRC, if the payload looks like RTP (version 2, at least 12 bytes).
    ssrc: Option<u32>,
}

/// Records every IPv4/UDP datagram arriving on one interface of a namespace (AF_PACKET, so it
/// sees what reaches the host whether or not a socket is bound to the port).
struct Sniffer {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    fn start(ns: &str, ifname: &str) -> Self {
        let name = CString::new(ifname).expect("interface name");
        let (fd, ifindex) = in_netns(ns, || {
            // SAFETY: plain socket/bind calls with valid, correctly sized arguments.
            unsafe {
                let proto = (libc::ETH_P_IP as u16).to_be();
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    i32::from(proto),
                );
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let fd = OwnedFd::from_raw_fd(fd);
                let ifindex = libc::if_nametoindex(name.as_ptr());
                assert!(ifindex > 0, "no interface {ifname} in {ns}");
                let mut sll: libc::sockaddr_ll = mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = ifindex as i32;
                let r = libc::bind(
                    fd.as_raw_fd(),
                    (&raw const sll).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert!(
                    r == 0,
                    "binding AF_PACKET: {}",
                    std::io::Error::last_os_error()
                );
                (fd, ifindex as i32)
            }
        });
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 20_000),
        )
        .expect("SO_RCVTIMEO");
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
            .expect("SO_RCVBUFFORCE");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 2048];
                // Reads until stopped, then drains what is queued.
                let mut draining = false;
                loop {
                    // SAFETY: a zeroed sockaddr_ll is a valid out-parameter.
                    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
                    let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    // SAFETY: buffer and address pointers are valid for the lengths given.
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            if draining { libc::MSG_DONTWAIT } else { 0 },
                            (&raw mut sll).cast(),
                            &mut len,
                        )
                    };
                    if n < 0 {
                        if draining {
                            return;
                        }
                        draining = stop.load(Ordering::SeqCst);
                        continue;
                    }
                    if sll.sll_ifindex != ifindex || sll.sll_pkttype != libc::PACKET_HOST {
                        continue;
                    }
                    if let Some(s) = parse_udp(&buf[..n as usize]) {
                        seen.lock().unwrap().push(s);
                    }
                }
            })
        };
        Sniffer {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops capturing (after what is queued) and returns everything seen.
    fn finish(mut self) -> Vec<Seen> {
        self.halt();
        self.seen()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("sniffer thread panicked");
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// An IPv4 packet (no link header) → the UDP datagram it carries.
fn parse_udp(p: &[u8]) -> Option<Seen> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != libc::IPPROTO_UDP as u8 {
        return None;
    }
    // Non-first fragments carry no UDP header.
    if u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let udp = p.get(ihl..ihl + 8)?;
    let addr = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let payload = &p[ihl + 8..];
    let ssrc = (payload.len() >= 12 && payload[0] >> 6 == 2)
        .then(|| u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]));
    Some(Seen {
        src: SocketAddrV4::new(addr(12), u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddrV4::new(addr(16), u16::from_be_bytes([udp[2], udp[3]])),
        ssrc,
    })
}

/// An RTP packet (PCMA) with a recognisable SSRC.
fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x08];
    p.extend(seq.to_be_bytes());
    p.extend((u32::from(seq) * 160).to_be_bytes());
    p.extend(ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5, 160));
    p
}

/// The SSRCs and the number of RTP packets of a pcap file (classic format, Ethernet, IPv4).
fn pcap_rtp(path: &str) -> (BTreeSet<u32>, usize) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    assert!(data.len() >= 24, "{path}: not a pcap");
    let le = match data[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("{path}: not a classic pcap file"),
    };
    let u32_at = |o: usize| {
        let b = [data[o], data[o + 1], data[o + 2], data[o + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "{path}: link type is not Ethernet");
    let (mut ssrcs, mut n, mut off) = (BTreeSet::new(), 0, 24);
    while off + 16 <= data.len() {
        let caplen = u32_at(off + 8) as usize;
        let frame = &data[off + 16..(off + 16 + caplen).min(data.len())];
        if let Some(s) = frame.get(14..).and_then(parse_udp)
            && let Some(ssrc) = s.ssrc
        {
            ssrcs.insert(ssrc);
            n += 1;
        }
        off += 16 + caplen;
    }
    (ssrcs, n)
}

// ---------------------------------------------------------------------------------------------
// The lab: namespaces, bridge, processes, pin root
// ---------------------------------------------------------------------------------------------

/// The namespaces and everything running in them. Dropping it stops every process, unloads the
/// data plane, deletes the namespaces (and with them the veths and the bridge), and removes the
/// pin root and the working directory (kept, with the logs, if the test failed).
struct Lab {
    sw: String,
    caller: String,
    callee: String,
    edge: String,
    third: String,
    /// Interface names, per role.
    caller_if: String,
    callee_if: String,
    edge_if: String,
    dir: PathBuf,
    pin_root: PathBuf,
    ebpf: EbpfCli,
    /// Stopped in reverse order of start.
    procs: Vec<Proc>,
    namespaces: Vec<String>,
}

impl Lab {
    fn new() -> Self {
        let (pid, n) = (std::process::id(), next_id());
        let name = |role: &str| format!("rtpedge-kam{pid}-{n}-{role}");
        let ifname = |role: char| format!("k{pid}n{n}{role}");
        let dir = std::env::temp_dir().join(format!("rtpedge-kam-{pid}-{n}"));
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/rtpedge-kam-{pid}-{n}"));
        let mut lab = Lab {
            sw: name("sw"),
            caller: name("caller"),
            callee: name("callee"),
            edge: name("edge"),
            third: name("third"),
            caller_if: ifname('c'),
            callee_if: ifname('e'),
            edge_if: ifname('x'),
            dir,
            ebpf: EbpfCli::new(&pin_root),
            pin_root,
            procs: Vec::new(),
            namespaces: Vec::new(),
        };
        // The bridge-side end is named after its host's end plus one letter.
        assert!(ifname('x').len() < 15, "interface names too long");
        if lab.dir.exists() {
            fs::remove_dir_all(&lab.dir).expect("stale working directory");
        }
        fs::create_dir_all(&lab.dir).expect("working directory");
        // From here on, Drop removes whatever exists.
        let sw = lab.sw.clone();
        ip(&["netns", "add", &sw]);
        lab.namespaces.push(sw.clone());
        ip(&[
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        let hosts = [
            (lab.caller.clone(), lab.caller_if.clone(), CALLER, 1u8),
            (lab.callee.clone(), lab.callee_if.clone(), CALLEE, 2),
            (lab.edge.clone(), lab.edge_if.clone(), EDGE, 10),
            (lab.third.clone(), ifname('t'), THIRD, 66),
        ];
        let mac = |last: u8| format!("02:72:74:88:07:{last:02x}");
        for (ns, dev, addr, last) in &hosts {
            ip(&["netns", "add", ns]);
            lab.namespaces.push(ns.clone());
            let port = format!("{dev}s");
            ip(&[
                "link",
                "add",
                dev,
                "address",
                &mac(*last),
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &sw,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // Static neighbours: no ARP delays or drops the first packets of anything.
        for (ns, dev, addr, _) in &hosts {
            for (_, _, other, last) in hosts.iter().filter(|h| h.2 != *addr) {
                ip(&[
                    "-n",
                    ns,
                    "neigh",
                    "replace",
                    &other.to_string(),
                    "lladdr",
                    &mac(*last),
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ]);
            }
        }
        lab
    }

    /// A working file: the fixture `name` with `@KEY@` placeholders filled in.
    fn fixture(&self, name: &str, subst: &[(&str, String)]) -> PathBuf {
        let src = workspace_root().join("tests/fixtures").join(name);
        let mut text =
            fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        for (key, value) in subst {
            text = text.replace(&format!("@{key}@"), value);
        }
        let parts: Vec<&str> = text.split('@').collect();
        let inner = &parts[1..parts.len().saturating_sub(1).max(1)];
        let unfilled = inner
            .iter()
            .find(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        assert!(unfilled.is_none(), "{name}: @{unfilled:?}@ not filled in");
        let out = self.dir.join(name);
        fs::write(&out, text).expect("writing a working file");
        out
    }

    fn spawn(&mut self, ns: &str, name: &'static str, program: &Path, args: &[&str]) -> usize {
        let p = Proc::spawn_in(ns, name, &self.dir, program, args);
        self.procs.push(p);
        self.procs.len() - 1
    }

    /// Panics with `msg` and the tails of every process log.
    fn fail(&self, msg: &str) -> ! {
        let logs: String = self.procs.iter().map(|p| p.tail(40)).collect();
        panic!("{msg}\n{logs}");
    }

    /// Fails with the logs unless `proc` is still running.
    fn alive(&self, proc: usize) {
        if self.procs[proc].exited() {
            self.fail(&format!("{} exited early", self.procs[proc].name));
        }
    }

    /// Waits until something is bound to UDP `addr` in namespace `ns` (/proc/net/udp as the
    /// namespace sees it), failing early if `proc` exits.
    fn wait_udp_bound(&self, ns: &str, addr: SocketAddrV4, proc: usize) {
        let want = format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(addr.ip().octets()),
            addr.port()
        );
        let bound = wait_until(TIMEOUT, || {
            self.alive(proc);
            in_netns(ns, || fs::read_to_string("/proc/thread-self/net/udp"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        });
        if !bound {
            self.fail(&format!("nothing bound UDP {addr} in {ns}"));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(5));
        }
        if self.pin_root.exists() {
            let out = self
                .ebpf
                .with_netns(&self.edge)
                .run(&["unload", "--iface", &self.edge_if]);
            if !out.success() && self.namespaces.contains(&self.edge) {
                let _ = writeln!(std::io::stderr(), "cleanup: {out}");
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        if self.pin_root.exists() {
            let _ = fs::remove_dir_all(&self.pin_root);
        }
        if thread::panicking() {
            eprintln!(
                "kamailio_sipp: logs and working files kept in {}",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ng replies
// ---------------------------------------------------------------------------------------------

/// One side of a call in a `query` reply: rtpedge's local port, the peer's endpoint, packets
/// rtpedge received from that peer.
#[derive(Clone, Copy, Debug)]
struct StreamView {
    local_port: u16,
    endpoint: SocketAddr,
    packets: i64,
}

/// The first media stream of every tag in a `query` reply.
fn streams(reply: &Value) -> Vec<StreamView> {
    let Some(tags) = reply.get("tags").and_then(Value::as_dict) else {
        return Vec::new();
    };
    tags.iter()
        .filter_map(|(_, tag)| {
            let s = tag
                .get("medias")?
                .as_list()?
                .first()?
                .get("streams")?
                .as_list()?
                .first()?;
            let ep = s.get("endpoint")?;
            let ip: IpAddr = ep.get_str("address")?.parse().ok()?;
            Some(StreamView {
                local_port: u16::try_from(s.get_int("local port")?).ok()?,
                endpoint: SocketAddr::new(ip, u16::try_from(ep.get_int("port")?).ok()?),
                packets: s.get("stats")?.get_int("packets")?,
            })
        })
        .collect()
}

/// The caller's and the callee's side of a `query` reply, by the endpoint's address.
fn sides(reply: &Value) -> Option<(StreamView, StreamView)> {
    let all = streams(reply);
    let by = |ip: Ipv4Addr| all.iter().find(|s| s.endpoint.ip() == ip).copied();
    Some((by(CALLER)?, by(CALLEE)?))
}

fn total_rtp_packets(reply: &Value) -> Option<i64> {
    reply.get("totals")?.get("RTP")?.get_int("packets")
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn kamailio_and_sipp_calls_through_rtpedge() {
    calls_through_rtpedge("kamailio_and_sipp_calls_through_rtpedge", false);
}

/// The same calls with `--fast-path`: once media flows both ways, XDP forwards it without the
/// bridge; every check above must hold all the same, and the kernel must have forwarded.
#[test]
fn kamailio_and_sipp_calls_through_the_fast_path() {
    calls_through_rtpedge("kamailio_and_sipp_calls_through_the_fast_path", true);
}

fn calls_through_rtpedge(test: &str, fast_path: bool) {
    let Some(tools) = prerequisites(test) else {
        return;
    };
    let started = Instant::now();
    let (pcap_ssrcs, pcap_packets) = pcap_rtp(PCAP);
    assert!(pcap_packets > 50, "{PCAP} holds {pcap_packets} RTP packets");
    assert!(
        !pcap_ssrcs.contains(&INJECT_SSRC) && !pcap_ssrcs.contains(&AFTER_BYE_SSRC),
        "marker SSRCs collide with the pcap's"
    );
    let mut lab = Lab::new();
    let tag = format!("{}-{}", std::process::id(), next_id());
    let expected_calls: BTreeSet<String> = (1..=CALLS)
        .map(|i| format!("rtpedge-kam-{tag}-{i}@{CALLER}"))
        .collect();

    // rtpedge in the edge namespace, XDP on its only interface.
    let ports = format!("{PORT_LO}-{PORT_HI}");
    let cdr_db = lab.dir.join("cdr.sqlite");
    let (pin_root, cdr) = (
        lab.pin_root.display().to_string(),
        cdr_db.display().to_string(),
    );
    let (edge, edge_if) = (lab.edge.clone(), lab.edge_if.clone());
    let edge_addr = EDGE.to_string();
    let mut args = vec![
        "--ng",
        NG,
        "--media-address",
        &edge_addr,
        "--ports",
        &ports,
        "--interface",
        &edge_if,
        "--pin-root",
        &pin_root,
        "--cdr-db",
        &cdr,
        "--workers",
        "2",
    ];
    // What the fast path needs of the lab, as a real edge would have it from its NIC and the
    // wire: veth delivers XDP_TX frames only to a peer running native XDP (the switch port
    // gets ours, on ports nothing uses), and the phones' packets carry complete UDP checksums
    // (no TX checksum offload: a wire never carries partial ones).
    let _switch_pins = fast_path.then(|| {
        args.push("--fast-path");
        let pins = rtpedge_tests::PinRootGuard::new();
        EbpfCli::new(&pins.0).with_netns(&lab.sw).ok(&[
            "load",
            "--iface",
            &format!("{edge_if}s"),
            "--mode",
            "native",
            "--no-egress",
            "--ports",
            "60000-60001",
        ]);
        for (ns, dev) in [(&lab.caller, &lab.caller_if), (&lab.callee, &lab.callee_if)] {
            let out =
                run(Command::new("ip")
                    .args(["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"]));
            assert!(out.success(), "{out}");
        }
        pins
    });
    let daemon = lab.spawn(&edge, "rtpedge", &rtpedge_bin(), &args);
    let ng = in_netns(&edge, || NgClient::new(NG))
        .expect("ng client in the edge namespace")
        .with_timeout(Duration::from_millis(200))
        .with_attempts(1);
    if !wait_until(TIMEOUT, || {
        lab.alive(daemon);
        ng.ping().is_ok()
    }) {
        lab.fail("rtpedge does not answer ping");
    }
    let ng = ng.with_timeout(Duration::from_secs(1)).with_attempts(3);
    let status = lab.ebpf.status();
    let xdp_on_edge = status["attachments"].as_array().is_some_and(|a| {
        a.iter()
            .any(|a| a["iface"] == edge_if.as_str() && a["program"] == "xdp")
    });
    assert!(xdp_on_edge, "XDP not attached to {edge_if}: {status}");
    assert_eq!(status["ports"], ports.as_str(), "{status}");

    // Kamailio, started after rtpedge answers (its rtpengine module pings at start-up).
    let kam_cfg = lab.fixture(
        "kamailio-rtpedge.cfg",
        &[
            ("LISTEN", format!("{EDGE}:{SIP_PORT}")),
            ("NG", NG.to_string()),
            ("CALLEE", format!("{CALLEE}:{SIP_PORT}")),
        ],
    );
    let run_dir = lab.dir.join("kamailio-run");
    fs::create_dir_all(&run_dir).expect("kamailio runtime dir");
    let (kam_cfg_s, run_dir_s) = (kam_cfg.display().to_string(), run_dir.display().to_string());
    let kamailio = lab.spawn(
        &edge,
        "kamailio",
        &tools.kamailio,
        &[
            "-DD", "-E", "-f", &kam_cfg_s, "-Y", &run_dir_s, "-w", &run_dir_s, "-m", "32", "-M",
            "8",
        ],
    );
    lab.wait_udp_bound(&edge, SocketAddrV4::new(EDGE, SIP_PORT), kamailio);

    // Capture what each phone's interface receives.
    let callee_capture = Sniffer::start(&lab.callee, &lab.callee_if);
    let caller_capture = Sniffer::start(&lab.caller, &lab.caller_if);

    // sipp: the callee answers and plays, the caller calls and plays.
    let pcap_subst = ("PCAP", PCAP.to_string());
    let uas_xml = lab.fixture("sipp-uas-pcap.xml", std::slice::from_ref(&pcap_subst));
    let uac_xml = lab.fixture(
        "sipp-uac-pcap.xml",
        &[pcap_subst.clone(), ("HOLD_MS", HOLD_MS.to_string())],
    );
    let calls = CALLS.to_string();
    let (callee_s, caller_s, sip_port) =
        (CALLEE.to_string(), CALLER.to_string(), SIP_PORT.to_string());
    let (uas_xml_s, uac_xml_s) = (uas_xml.display().to_string(), uac_xml.display().to_string());
    let callee_ns = lab.callee.clone();
    let uas = lab.spawn(
        &callee_ns,
        "sipp-uas",
        &tools.sipp,
        &[
            "-sf",
            &uas_xml_s,
            "-i",
            &callee_s,
            "-p",
            &sip_port,
            "-mi",
            &callee_s,
            "-mp",
            "20000",
            "-m",
            &calls,
            "-nostdin",
            "-trace_err",
            "-trace_screen",
        ],
    );
    lab.wait_udp_bound(&callee_ns, SocketAddrV4::new(CALLEE, SIP_PORT), uas);
    let cid = format!("rtpedge-kam-{tag}-%u@%s");
    let remote = format!("{EDGE}:{SIP_PORT}");
    let caller_ns = lab.caller.clone();
    let uac = lab.spawn(
        &caller_ns,
        "sipp-uac",
        &tools.sipp,
        &[
            &remote,
            "-sf",
            &uac_xml_s,
            "-s",
            "callee",
            "-i",
            &caller_s,
            "-p",
            &sip_port,
            "-mi",
            &caller_s,
            "-mp",
            "16000",
            "-m",
            &calls,
            "-l",
            &calls,
            "-r",
            &calls,
            "-rp",
            "1000",
            "-cid_str",
            &cid,
            "-nostdin",
            "-trace_err",
            "-trace_screen",
        ],
    );

    // (6) While the first call is up: query reports packets from both phones.
    let first = expected_calls.first().expect("calls").clone();
    let mut live = None;
    let queried = wait_until(TIMEOUT, || {
        lab.alive(uac);
        live = ng
            .query(&first, None, None)
            .ok()
            .filter(|r| sides(r).is_some_and(|(a, b)| a.packets > 0 && b.packets > 0));
        live.is_some()
    });
    if !queried {
        lab.fail(&format!("query {first} never showed packets both ways"));
    }
    let live = live.expect("query reply");
    let (a, b) = sides(&live).expect("both sides");
    let port_a = v4(EDGE, a.local_port);
    let port_b = v4(EDGE, b.local_port);
    for p in [a.local_port, b.local_port] {
        assert!(
            (PORT_LO..=PORT_HI).contains(&p),
            "leg port {p} outside {ports}"
        );
    }
    // The pinholes are still open after the query: it was answered during the call.
    for local in [port_a, port_b] {
        let ph = lab.ebpf.pinhole(local);
        assert_eq!(ph.str("state"), Some("open"), "{:?}", ph.0);
        assert_eq!(ph.str("policy"), Some("exact"), "{:?}", ph.0);
    }
    let listed = ng.list(None).expect("list");
    assert!(listed.contains(&first), "list {listed:?} lacks {first}");
    eprintln!(
        "query during {first}: caller→rtpedge {} packets (leg {port_a}, from {}), callee→rtpedge {} \
         packets (leg {port_b}, from {}), totals RTP {:?}; {} calls listed",
        a.packets,
        a.endpoint,
        b.packets,
        b.endpoint,
        total_rtp_packets(&live),
        listed.len()
    );

    // (3) A third address sends into the live call's caller-facing leg: XDP drops every packet.
    let before = lab.ebpf.counters();
    let ph_before = lab.ebpf.pinhole(port_a);
    let injector = UdpEndpoint::bind(&lab.third, v4(THIRD, 7000));
    for seq in 0..INJECTED {
        injector.send_to(&rtp(INJECT_SSRC, seq as u16), port_a);
        thread::sleep(Duration::from_millis(1));
    }
    let mut wrong = 0;
    if !wait_until(TIMEOUT, || {
        wrong = lab.ebpf.pinhole(port_a).num("dropped_wrong_source");
        wrong >= ph_before.num("dropped_wrong_source") + INJECTED
    }) {
        lab.fail(&format!(
            "pinhole {port_a} dropped {wrong} wrong-source packets, expected {INJECTED} more"
        ));
    }
    let after = lab.ebpf.counters();
    let grew = |c: &Counters, d: &Counters, k: &str| d.get(k) - c.get(k);
    assert!(
        grew(&before, &after, "wrong_source") >= INJECTED,
        "wrong_source {} → {}",
        before.get("wrong_source"),
        after.get("wrong_source")
    );
    let ph = lab.ebpf.pinhole(port_a);
    assert_eq!(
        ph.str("state"),
        Some("open"),
        "the call ended during the injection: {:?}",
        ph.0
    );
    eprintln!(
        "third address: {INJECTED} packets to {port_a}; pinhole dropped_wrong_source {} → {}, \
         passed {}; global wrong_source {} → {}",
        ph_before.num("dropped_wrong_source"),
        ph.num("dropped_wrong_source"),
        ph.num("packets"),
        before.get("wrong_source"),
        after.get("wrong_source")
    );

    // (1) Every call completes.
    let uac_status = lab.procs[uac].wait(Duration::from_secs(60));
    if uac_status.is_none_or(|s| !s.success()) {
        lab.fail(&format!(
            "sipp UAC: {uac_status:?} (0 = every call successful)"
        ));
    }
    let uas_status = lab.procs[uas].wait(TIMEOUT);
    if uas_status.is_none_or(|s| !s.success()) {
        lab.fail(&format!(
            "sipp UAS: {uas_status:?} (0 = every call successful)"
        ));
    }

    // (4) After BYE: the pinholes are closed and nothing sent to the call's legs passes, even
    // from the phones' own signalled addresses.
    let closed_before = lab.ebpf.counters();
    let (ph_a, ph_b) = (lab.ebpf.pinhole(port_a), lab.ebpf.pinhole(port_b));
    for ph in [&ph_a, &ph_b] {
        assert_eq!(ph.str("state"), Some("closed"), "after BYE: {:?}", ph.0);
    }
    let from_caller = UdpEndpoint::bind(&lab.caller, a.endpoint);
    let from_callee = UdpEndpoint::bind(&lab.callee, b.endpoint);
    for seq in 0..AFTER_BYE {
        from_caller.send_to(&rtp(AFTER_BYE_SSRC, seq as u16), port_a);
        from_callee.send_to(&rtp(AFTER_BYE_SSRC, seq as u16), port_b);
        thread::sleep(Duration::from_millis(1));
    }
    for (local, ph) in [(port_a, &ph_a), (port_b, &ph_b)] {
        let mut n = 0;
        if !wait_until(TIMEOUT, || {
            n = lab.ebpf.pinhole(local).num("dropped_closed");
            n >= ph.num("dropped_closed") + AFTER_BYE
        }) {
            lab.fail(&format!(
                "pinhole {local} dropped {n} packets as closed, expected {AFTER_BYE} more"
            ));
        }
    }
    let closed_after = lab.ebpf.counters();
    assert!(grew(&closed_before, &closed_after, "closed") >= 2 * AFTER_BYE);
    assert_eq!(
        lab.ebpf.pinhole(port_a).num("packets"),
        ph_a.num("packets"),
        "a closed pinhole passed packets"
    );
    eprintln!(
        "after BYE: {AFTER_BYE} packets to each leg from the phones' addresses; global closed {} → \
         {}",
        closed_before.get("closed"),
        closed_after.get("closed")
    );

    // Kamailio, then rtpedge (SIGTERM: it ends what is left and flushes CDRs). XDP stays
    // attached without the daemon: its ports are then no pinhole at all.
    lab.procs[kamailio].stop(Duration::from_secs(10));
    let daemon_status = lab.procs[daemon].stop(Duration::from_secs(15));
    if !daemon_status.success() {
        lab.fail(&format!("rtpedge exited with {daemon_status}"));
    }
    let gone_before = lab.ebpf.counters();
    for seq in 0..AFTER_BYE {
        from_caller.send_to(&rtp(AFTER_BYE_SSRC, (AFTER_BYE + seq) as u16), port_a);
    }
    let mut np = 0;
    if !wait_until(TIMEOUT, || {
        np = lab.ebpf.counters().get("no_pinhole");
        np >= gone_before.get("no_pinhole") + AFTER_BYE
    }) {
        panic!(
            "no_pinhole {} → {np} after the daemon stopped, expected {AFTER_BYE} more",
            gone_before.get("no_pinhole")
        );
    }
    eprintln!(
        "after the daemon stopped: {AFTER_BYE} packets to {port_a}; global no_pinhole {} → {np}; \
         passed over the whole run: {}; forwarded by the fast path: {} (fell back to the stack: {})",
        gone_before.get("no_pinhole"),
        gone_before.get("passed"),
        gone_before.get("forwarded"),
        gone_before.get("forward_fallback")
    );
    if fast_path {
        // Each call's first packets go through the bridge; the rest, the kernel's.
        assert!(
            gone_before.get("forwarded") * 2 > gone_before.get("passed"),
            "the fast path forwarded {} of {} passed packets",
            gone_before.get("forwarded"),
            gone_before.get("passed")
        );
    } else {
        assert_eq!(gone_before.get("forwarded"), 0, "fast path off by default");
    }

    // (2) What the phones received: RTP from rtpedge's address and range only, none of the
    // test's marker packets, nothing straight from the other phone or the third address.
    // Everything sent is judged by now (counted by XDP above); a little slack for the last
    // datagrams of sipp's play to be read off the capture socket.
    thread::sleep(Duration::from_millis(200));
    let at_callee = callee_capture.finish();
    let at_caller = caller_capture.finish();
    let media = |seen: &[Seen], me: Ipv4Addr, peer: Ipv4Addr| {
        let rtp: Vec<Seen> = seen
            .iter()
            .filter(|s| *s.dst.ip() == me && s.src.port() != SIP_PORT)
            .copied()
            .collect();
        let bad: Vec<&Seen> = rtp
            .iter()
            .filter(|s| *s.src.ip() != EDGE || !(PORT_LO..=PORT_HI).contains(&s.src.port()))
            .collect();
        assert!(
            bad.is_empty(),
            "{me} received media not from rtpedge's legs: {:?} (of {})",
            &bad[..bad.len().min(5)],
            bad.len()
        );
        assert!(
            !seen
                .iter()
                .any(|s| *s.src.ip() == peer || *s.src.ip() == THIRD),
            "{me} received datagrams straight from {peer} or {THIRD}"
        );
        let markers = rtp
            .iter()
            .filter(|s| matches!(s.ssrc, Some(INJECT_SSRC | AFTER_BYE_SSRC)))
            .count();
        assert_eq!(
            markers, 0,
            "{me} received injected or after-BYE packets through rtpedge"
        );
        let from_pcap = rtp
            .iter()
            .filter(|s| s.ssrc.is_some_and(|x| pcap_ssrcs.contains(&x)))
            .count();
        let legs: BTreeSet<u16> = rtp.iter().map(|s| s.src.port()).collect();
        (from_pcap, legs.len())
    };
    let (to_callee, callee_legs) = media(&at_callee, CALLEE, CALLER);
    let (to_caller, caller_legs) = media(&at_caller, CALLER, CALLEE);
    let least = CALLS * pcap_packets / 2;
    assert!(
        to_callee >= least && to_caller >= least,
        "RTP through rtpedge: {to_callee} packets reached the callee, {to_caller} the caller; \
         expected at least {least} each ({CALLS} calls of {pcap_packets})"
    );
    assert_eq!(callee_legs, CALLS, "rtpedge legs sending to the callee");
    assert_eq!(caller_legs, CALLS, "rtpedge legs sending to the caller");
    eprintln!(
        "captured: {to_callee} RTP packets at the callee from {callee_legs} rtpedge legs, \
         {to_caller} at the caller from {caller_legs} legs ({CALLS} calls × {pcap_packets} in \
         the pcap); 0 injected or after-BYE packets"
    );

    // (5) The CDRs: one per call sipp placed, ended by delete, answered, media both ways.
    let db =
        rusqlite::Connection::open_with_flags(&cdr_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the CDR database");
    let mut stmt = db
        .prepare(
            "SELECT call_id, end_reason, answer_at, end_at, duration_ms, packets_ab, packets_ba, \
             bytes_ab, bytes_ba, dropped_xdp, lost_ab + lost_ba FROM cdrs ORDER BY call_id",
        )
        .expect("CDR query");
    type Row = (
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
            ))
        })
        .expect("reading CDRs")
        .collect::<Result<_, _>>()
        .expect("reading CDRs");
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        ids,
        expected_calls
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "one CDR per call sipp placed"
    );
    for (id, reason, answer_at, end_at, duration, pab, pba, bab, bba, xdp, lost) in &rows {
        assert_eq!(reason.as_deref(), Some("delete"), "{id}");
        let (Some(answer_at), Some(end_at)) = (answer_at, end_at) else {
            panic!("{id}: answer_at {answer_at:?}, end_at {end_at:?}");
        };
        assert!(end_at >= answer_at && *duration > 0, "{id}: duration");
        assert!(*pab > 0 && *pba > 0, "{id}: packets ab {pab}, ba {pba}");
        // Every packet of the pcap each way, counted once whichever path carried it.
        assert_eq!(
            (*pab as usize, *pba as usize),
            (pcap_packets, pcap_packets),
            "{id}: packets ab, ba"
        );
        // sipp plays the pcap's unbroken sequence: nothing lost, whichever path counted it.
        assert_eq!(*lost, 0, "{id}: lost packets");
        assert!(*bab > 0 && *bba > 0, "{id}: bytes ab {bab}, ba {bba}");
        if *id == first {
            assert!(
                *xdp >= INJECTED as i64,
                "{id}: dropped_xdp {xdp}, the third address sent {INJECTED}"
            );
        }
        eprintln!(
            "CDR {id}: delete, {duration} ms, packets ab {pab} ba {pba}, bytes ab {bab} ba {bba}, \
             dropped_xdp {xdp}"
        );
    }
    eprintln!(
        "{test}: {CALLS} calls in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
