//! Network-namespace integration tests of the data plane: real UDP traffic from one namespace to
//! another over a veth pair, with `xdp_edge` attached natively on the receiving end (and
//! `tc_egress` on its egress) through the operator interface, `scripts/ebpf`.
//!
//! Covered: default deny and the untouched non-media path; exact pinholes passing with DSCP
//! rewritten (ECN kept) and wrong sources dropped; per-pinhole packet and byte counters; TC
//! egress marking; the learning latch; the rate limit; close and reopen while media flows;
//! a loader "restart" while media flows (no gap, counters kept); the `ip netns exec` command
//! sequence; operator errors; IPv6.
//!
//! Assertions are on counts and sequence numbers only; waits poll with generous timeouts.
//! Needs root (fails under `CI` without it, skips loudly elsewhere) and the `rtpedge` binary
//! (`cargo build -p rtpedge`; scripts/test builds it first).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use rtpedge_tests::{
    Collector, EbpfCli, PinRootGuard, RX_V4, RX_V6, Stream, TX_V4, TX_V4_OTHER, TX_V6, TX_V6_OTHER,
    Topology, frame_len, numbered_payload, possible_cpus, require_root, wait_until,
};

/// How long a test waits for packets it expects, or for counters to settle.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A steady stream's pace (about 1000 packets per second).
const STREAM_INTERVAL: Duration = Duration::from_millis(1);
/// Packets after the one a sender had reached when a command returned that may still be judged
/// under the old configuration: the one being sent at that instant, plus one for good measure.
const IN_FLIGHT: u64 = 2;
/// TOS of Expedited Forwarding (DSCP 46) with ECN bits clear.
const EF_TOS: u8 = 46 << 2;

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A topology with the data plane loaded natively on the receiving end, or `None` when the test
/// is skipped for want of root.
fn loaded_topology(test: &str) -> Option<Topology> {
    if !require_root(test) {
        return None;
    }
    let mut topo = Topology::new();
    let out = topo.load_native();
    assert!(
        out.contains(&format!("attached to {}: xdp (native)", topo.rx_if)),
        "{out}"
    );
    assert!(topo.rx_has_xdp(), "{}", topo.rx_link());
    Some(topo)
}

/// `pinhole open --local L --remote R --policy P [EXTRA...]`.
fn open_pinhole(ebpf: &EbpfCli, local: SocketAddr, remote: &str, policy: &str, extra: &[&str]) {
    let local = local.to_string();
    let mut args = vec![
        "pinhole", "open", "--local", &local, "--remote", remote, "--policy", policy,
    ];
    args.extend_from_slice(extra);
    ebpf.ok(&args);
}

/// Waits until the pinhole on `local` has judged (passed or dropped) `n` packets.
fn wait_judged(ebpf: &EbpfCli, local: SocketAddr, n: u64) {
    let mut last = 0;
    let done = wait_until(TIMEOUT, || {
        last = ebpf.pinhole(local).judged();
        last >= n
    });
    assert!(done, "pinhole {local} judged {last} packets, expected {n}");
}

#[test]
fn default_deny_drops_media_without_pinhole_and_passes_other_ports() {
    let Some(topo) = loaded_topology("default_deny") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let media = v4(RX_V4, 30000);
    let sip = v4(RX_V4, 5060);
    let rx_media = topo.rx_socket(media);
    let rx_sip = topo.rx_socket(sip);
    let tx = topo.tx_socket(v4(TX_V4, 4000));
    tx.set_tos(0x22); // DSCP 8, ECT(0): must arrive as sent outside the media range

    const DENIED: u64 = 25;
    tx.send_numbered(media, 0..DENIED);
    let mut no_pinhole = 0;
    assert!(
        wait_until(TIMEOUT, || {
            no_pinhole = ebpf.counters().get("no_pinhole");
            no_pinhole >= DENIED
        }),
        "no_pinhole reached {no_pinhole}, expected {DENIED}"
    );

    // Sent after the denied packets on the same path: once these arrived, anything that had
    // slipped through to the media socket would be queued there already.
    const SIGNALLING: u64 = 10;
    tx.send_numbered(sip, 0..SIGNALLING);
    let got = rx_sip.recv_n(SIGNALLING as usize, TIMEOUT);
    assert_eq!(
        got.len() as u64,
        SIGNALLING,
        "port 5060 is outside the range"
    );
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.payload, numbered_payload(i as u64), "payload untouched");
        assert_eq!(d.from, tx.local());
        assert_eq!(d.tos, Some(0x22), "TOS untouched outside the media range");
    }
    let leaked = rx_media.queued();
    assert!(
        leaked.is_empty(),
        "media without pinhole arrived: {leaked:?}"
    );

    let c = ebpf.counters();
    assert_eq!(
        c.get("no_pinhole"),
        DENIED,
        "every denied packet is counted once"
    );
    assert_eq!(c.get("passed"), 0);
    assert_eq!(c.get("dscp_marked"), 0);
    assert!(c.get("not_media") >= SIGNALLING, "{:?}", c);
}

#[test]
fn exact_pinhole_passes_with_dscp_and_drops_wrong_sources() {
    let Some(topo) = loaded_topology("exact_pinhole") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let local = v4(RX_V4, 30000);
    let remote = v4(TX_V4, 4000);
    let rx = topo.rx_socket(local);
    let good = topo.tx_socket(remote);
    let wrong_port = topo.tx_socket(v4(TX_V4, 4001));
    let wrong_addr = topo.tx_socket(v4(TX_V4_OTHER, 4000));
    open_pinhole(ebpf, local, &remote.to_string(), "exact", &["--dscp", "46"]);

    // Wrong sources first; the good packets after them act as a sentinel.
    wrong_port.send_numbered(local, 1000..1007);
    wrong_addr.send_numbered(local, 2000..2005);
    good.set_tos(0x22); // DSCP 8 + ECT(0)
    good.send_numbered(local, 0..10);
    good.set_tos(0x23); // DSCP 8 + CE
    good.send_numbered(local, 10..20);

    let got = rx.recv_n(20, TIMEOUT);
    assert_eq!(got.len(), 20, "received {got:?}");
    for (i, d) in got.iter().enumerate() {
        let ecn = if i < 10 { 0b10 } else { 0b11 };
        assert_eq!(d.seq(), i as u64, "only the exact source passes, in order");
        assert_eq!(d.from, remote);
        assert_eq!(d.tos, Some(EF_TOS | ecn), "DSCP rewritten to 46, ECN kept");
    }
    wait_judged(ebpf, local, 32);
    assert!(rx.queued().is_empty());

    let ph = ebpf.pinhole(local);
    assert_eq!(ph.num("packets"), 20);
    assert_eq!(ph.num("bytes"), 20 * frame_len(true));
    assert_eq!(ph.num("dropped_wrong_source"), 12);
    assert_eq!(ph.num("dropped_closed"), 0);
    assert_eq!(ph.str("state"), Some("open"));
    assert_eq!(ph.str("policy"), Some("exact"));
    assert_eq!(ph.str("remote"), Some("10.99.0.1:4000"));
    assert_eq!(ph.num("dscp"), 46);
    let c = ebpf.counters();
    assert_eq!(c.get("passed"), 20);
    assert_eq!(c.get("dscp_marked"), 20);
    assert_eq!(c.get("wrong_source"), 12);
    assert_eq!(c.get("no_pinhole"), 0);

    // TC egress: what the host sends from the pinhole's address and port leaves marked EF.
    rx.send_numbered(remote, 0..3);
    let back = good.recv_n(3, TIMEOUT);
    assert_eq!(back.len(), 3);
    for d in &back {
        assert_eq!(d.from, local);
        assert_eq!(d.tos, Some(EF_TOS), "egress marked with the pinhole's DSCP");
    }
    let ph = ebpf.pinhole(local);
    assert_eq!(ph.num("tx_packets"), 3);
    assert_eq!(ebpf.counters().get("egress_marked"), 3);
}

#[test]
fn learning_pinhole_latches_first_source_and_refuses_others() {
    let Some(topo) = loaded_topology("learning_pinhole") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let local = v4(RX_V4, 30010);
    let rx = topo.rx_socket(local);
    let first = topo.tx_socket(v4(TX_V4, 4000));
    // Same host, another port: an RTP Bleed / injection attempt once the first is latched.
    let intruder = topo.tx_socket(v4(TX_V4, 4002));
    open_pinhole(ebpf, local, "*", "learning", &[]);
    let ph = ebpf.pinhole(local);
    assert_eq!(ph.str("learned"), None, "nothing latched before traffic");

    first.send_numbered(local, 0..5);
    let got = rx.recv_n(5, TIMEOUT);
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|d| d.from == first.local()));
    let ph = ebpf.pinhole(local);
    assert_eq!(ph.str("learned"), Some("10.99.0.1:4000"));
    assert_eq!(ph.str("remote"), Some("10.99.0.1:4000"));
    assert_eq!(ph.str("policy"), Some("learning"));

    intruder.send_numbered(local, 100..110);
    first.send_numbered(local, 5..10); // the latched source keeps passing (and is a sentinel)
    let got = rx.recv_n(5, TIMEOUT);
    let seqs: Vec<u64> = got.iter().map(|d| d.seq()).collect();
    assert_eq!(seqs, (5..10).collect::<Vec<_>>());
    assert!(got.iter().all(|d| d.from == first.local()));
    wait_judged(ebpf, local, 20);
    let leaked = rx.queued();
    assert!(leaked.is_empty(), "second source got through: {leaked:?}");

    let ph = ebpf.pinhole(local);
    assert_eq!(ph.str("learned"), Some("10.99.0.1:4000"), "latch kept");
    assert_eq!(ph.num("packets"), 10);
    assert_eq!(ph.num("dropped_wrong_source"), 10);
    let c = ebpf.counters();
    assert_eq!(c.get("learned"), 1);
    assert_eq!(c.get("wrong_source"), 10);
    assert_eq!(c.get("passed"), 10);
}

#[test]
fn rate_limited_pinhole_admits_about_the_burst() {
    let Some(topo) = loaded_topology("rate_limit") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let local = v4(RX_V4, 30020);
    let remote = v4(TX_V4, 4000);
    let rx = topo.rx_socket(local);
    let tx = topo.tx_socket(remote);
    const PPS: u64 = 100;
    const BURST: u64 = 10;
    const SENT: u64 = 200;
    let rate = format!("{PPS}/{BURST}");
    open_pinhole(
        ebpf,
        local,
        &remote.to_string(),
        "exact",
        &["--rate", &rate],
    );

    let start = Instant::now();
    tx.send_numbered(local, 0..SENT);
    wait_judged(ebpf, local, SENT);
    // Every packet was judged within `elapsed` of the first one.
    let elapsed = start.elapsed();

    let ph = ebpf.pinhole(local);
    let passed = ph.num("packets");
    let limited = ph.num("dropped_rate_limited");
    assert_eq!(passed + limited, SENT, "{ph:?}");
    let got = rx.recv_n(passed as usize, TIMEOUT);
    assert_eq!(got.len() as u64, passed, "what passed XDP arrives");
    assert!(rx.queued().is_empty());

    // Each CPU has its own bucket: it starts full and refills at PPS for at most `elapsed`.
    let refill = (elapsed.as_secs_f64() * PPS as f64).ceil() as u64;
    let most = possible_cpus() * (BURST + refill + 1);
    assert!(passed >= BURST, "a full bucket admits the burst: {passed}");
    assert!(
        passed <= most,
        "{passed} passed, at most {most} possible in {elapsed:?}"
    );
    assert!(limited > 0, "a back-to-back burst of {SENT} is limited");
    let c = ebpf.counters();
    assert_eq!(c.get("rate_limited"), limited);
    assert_eq!(c.get("passed"), passed);
}

#[test]
fn close_and_reopen_take_effect_on_the_next_packet_while_media_flows() {
    let Some(topo) = loaded_topology("close_reopen") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let local = v4(RX_V4, 30030);
    let remote = v4(TX_V4, 4000);
    let local_arg = local.to_string();
    open_pinhole(ebpf, local, &remote.to_string(), "exact", &[]);
    let collector = Collector::start(topo.rx_socket(local));
    let stream = Stream::start(topo.tx_socket(remote), local, STREAM_INTERVAL);
    assert!(
        collector.wait_for(TIMEOUT, |s| s.len() >= 30),
        "stream does not pass the open pinhole"
    );

    ebpf.ok(&["pinhole", "close", "--local", &local_arg]);
    // Every packet after this one starts being sent after the close took effect.
    let closed_at = stream.sent();
    let mut dropped = 0;
    assert!(
        wait_until(TIMEOUT, || {
            dropped = ebpf.pinhole(local).num("dropped_closed");
            dropped >= 100
        }),
        "only {dropped} packets dropped by the closed pinhole"
    );
    // Packets are judged in the order they are sent (one sender, one veth queue): numbers
    // below this were all judged while the pinhole was closed, or before.
    let judged_while_closed = ebpf.pinhole(local).judged();
    assert!(judged_while_closed > closed_at + 50);

    open_pinhole(ebpf, local, &remote.to_string(), "exact", &[]);
    let reopened_at = stream.sent();
    assert!(
        collector.wait_for(TIMEOUT, |s| s.iter().any(|&q| q >= reopened_at + 100)),
        "stream does not pass the reopened pinhole"
    );
    let total = stream.stop();
    wait_judged(ebpf, local, total);
    let ph = ebpf.pinhole(local);
    let passed = ph.num("packets");
    assert!(collector.wait_for(TIMEOUT, |s| s.len() as u64 >= passed));
    let seqs = collector.stop();

    let leaked: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|&q| q > closed_at + IN_FLIGHT && q < judged_while_closed)
        .collect();
    assert!(
        leaked.is_empty(),
        "sent after `close` returned (at {closed_at}) yet received: {leaked:?}"
    );
    let received: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(received.len(), seqs.len(), "duplicates");
    let missing: Vec<u64> = (reopened_at + IN_FLIGHT..total)
        .filter(|q| !received.contains(q))
        .collect();
    assert!(
        missing.is_empty(),
        "sent after `open` returned (at {reopened_at}) yet lost: {missing:?}"
    );
    assert_eq!(seqs.len() as u64, passed, "what passed XDP arrived");
    assert_eq!(passed + ph.num("dropped_closed"), total, "{ph:?}");
    assert_eq!(ph.str("state"), Some("open"));
    assert_eq!(ebpf.counters().get("closed"), ph.num("dropped_closed"));
}

#[test]
fn restart_while_media_flows_has_no_gap_and_keeps_counters() {
    let Some(topo) = loaded_topology("restart") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let local = v4(RX_V4, 30040);
    let remote = v4(TX_V4, 4000);
    open_pinhole(ebpf, local, &remote.to_string(), "exact", &["--dscp", "46"]);
    let collector = Collector::start(topo.rx_socket(local));
    let stream = Stream::start(topo.tx_socket(remote), local, STREAM_INTERVAL);
    assert!(collector.wait_for(TIMEOUT, |s| s.len() >= 50));

    let before = ebpf.pinhole(local).num("packets");
    assert!(before > 0);
    let restart_from = stream.sent();
    // The restart: the loader runs again on an attached interface, then a new process reopens
    // the pinned maps.
    let out = ebpf.ok(&["load", "--iface", &topo.rx_if]);
    assert!(
        out.contains(&format!("already attached to {}", topo.rx_if))
            && out.contains("xdp (native)"),
        "{out}"
    );
    let ph = ebpf.pinhole(local);
    let restart_to = stream.sent();
    assert!(
        ph.num("packets") >= before,
        "counters reset: {before} -> {ph:?}"
    );
    assert_eq!(ph.str("state"), Some("open"));
    assert_eq!(ph.num("dscp"), 46);
    assert!(topo.rx_has_xdp());

    assert!(
        collector.wait_for(TIMEOUT, |s| s.iter().any(|&q| q >= restart_to + 50)),
        "stream stopped passing after the restart"
    );
    let total = stream.stop();
    wait_judged(ebpf, local, total);
    assert!(collector.wait_for(TIMEOUT, |s| s.len() as u64 >= total));
    let seqs = collector.stop();

    let received: BTreeSet<u64> = seqs.iter().copied().collect();
    let missing: Vec<u64> = (0..total).filter(|q| !received.contains(q)).collect();
    assert!(
        missing.is_empty(),
        "lost {missing:?} (restart window {restart_from}..{restart_to}, {total} sent)"
    );
    assert_eq!(seqs.len() as u64, total, "duplicates");
    let ph = ebpf.pinhole(local);
    assert_eq!(ph.num("packets"), total, "counted across the restart");
    assert_eq!(ph.num("bytes"), total * frame_len(true));
    assert_eq!(ebpf.counters().get("passed"), total);
}

#[test]
fn ip_netns_exec_load_status_unload_sequence() {
    if !require_root("ip_netns_exec_sequence") {
        return;
    }
    let mut topo = Topology::new();
    let ns = topo.rx_ns.clone();
    let iface = topo.rx_if.clone();
    let pin_root = topo.ebpf.pin_root().to_path_buf();
    // No --netns: each command runs under `ip netns exec`, a process of its own.
    let cli = EbpfCli::new(&pin_root);

    topo.set_loaded(true);
    let out = cli.run_in_ip_netns_exec(&ns, &["load", "--iface", &iface, "--mode", "native"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout
            .contains(&format!("attached to {iface}: xdp (native)"))
            && out.stdout.contains("maps created"),
        "{out}"
    );
    assert!(topo.rx_has_xdp(), "{}", topo.rx_link());
    assert!(
        pin_root.is_dir(),
        "pins made under ip netns exec are visible outside"
    );

    let out = cli.run_in_ip_netns_exec(&ns, &["status", "--json"]);
    assert!(out.success(), "{out}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(status["mode"], "native", "{status}");
    let xdp = serde_json::json!({"iface": iface, "program": "xdp", "mode": "native"});
    assert!(
        status["attachments"]
            .as_array()
            .is_some_and(|a| a.contains(&xdp)),
        "{status}"
    );

    let local = v4(RX_V4, 30050);
    let out = cli.run_in_ip_netns_exec(
        &ns,
        &[
            "pinhole",
            "open",
            "--local",
            &local.to_string(),
            "--remote",
            "10.99.0.1:4000",
            "--policy",
            "exact",
        ],
    );
    assert!(out.success(), "{out}");
    // Seen from the host's namespaces by yet another process.
    assert_eq!(cli.pinhole(local).str("state"), Some("open"));

    let out = cli.run_in_ip_netns_exec(&ns, &["unload", "--iface", &iface]);
    assert!(out.success(), "{out}");
    topo.set_loaded(false);
    assert!(out.stdout.contains("maps unpinned"), "{out}");
    assert!(!topo.rx_has_xdp(), "XDP still attached: {}", topo.rx_link());
    assert!(!pin_root.exists(), "{} left behind", pin_root.display());
    let out = cli.run(&["status"]);
    assert!(!out.success() && out.stderr.contains("not loaded"), "{out}");
}

#[test]
fn operator_errors_exit_nonzero_with_one_clear_line() {
    if !require_root("operator_errors") {
        return;
    }
    let pin_root = PinRootGuard::new();
    let cli = EbpfCli::new(&pin_root.0);

    let out = cli.run(&["load", "--iface", "does-not-exist"]);
    assert!(!out.success(), "{out}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("does-not-exist"), "{out}");
    assert!(!pin_root.0.exists(), "a failed load leaves no pins");

    // Nothing was ever loaded under this root, which may not exist or be an empty directory.
    let empty =
        std::env::temp_dir().join(format!("rtpedge-t{}-empty-pin-root", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    for root in [pin_root.0.as_path(), empty.as_path()] {
        let out = EbpfCli::new(root).run(&["status"]);
        assert!(!out.success(), "{out}");
        let lines = out.stderr_lines();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].contains("not loaded"), "{out}");
    }
    let _ = std::fs::remove_dir(&empty);
}

#[test]
fn pinhole_open_rejects_bad_addresses() {
    let Some(topo) = loaded_topology("pinhole_open_bad_address") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let cases: [(&str, &str, &str); 5] = [
        ("10.99.0.2", "10.99.0.1:4000", "10.99.0.2"),  // no port
        ("10.99.0.2:30000", "10.99.0.1", "10.99.0.1"), // exact needs a port
        ("10.99.0.2:30000", "10.99.0.1:http", "10.99.0.1:http"),
        ("0.0.0.0:30000", "10.99.0.1:4000", "0.0.0.0:30000"), // unspecified local
        ("10.99.0.2:30000", "[fd00:99::1]:4000", "[fd00:99::1]:4000"), // mixed families
    ];
    for (local, remote, mentioned) in cases {
        let args = [
            "pinhole", "open", "--local", local, "--remote", remote, "--policy", "exact",
        ];
        let out = ebpf.run(&args);
        assert!(!out.success(), "{out}");
        assert!(out.stderr.contains(mentioned), "{out}");
    }
    assert!(ebpf.pinholes().is_empty(), "nothing was opened");
}

#[test]
fn ipv6_pinhole_passes_with_traffic_class_and_drops_wrong_sources() {
    let Some(topo) = loaded_topology("ipv6_pinhole") else {
        return;
    };
    let ebpf = &topo.ebpf;
    let local = v6(RX_V6, 30060);
    let remote = v6(TX_V6, 4000);
    let rx = topo.rx_socket(local);
    let good = topo.tx_socket(remote);
    let wrong_port = topo.tx_socket(v6(TX_V6, 4001));
    let wrong_addr = topo.tx_socket(v6(TX_V6_OTHER, 4000));
    let unopened = v6(RX_V6, 30061);
    let rx_unopened = topo.rx_socket(unopened);
    open_pinhole(ebpf, local, &remote.to_string(), "exact", &["--dscp", "46"]);

    good.send_numbered(unopened, 0..4);
    wrong_port.send_numbered(local, 1000..1006);
    wrong_addr.send_numbered(local, 2000..2003);
    good.set_tos(0x01); // ECT(1)
    good.send_numbered(local, 0..10);
    let got = rx.recv_n(10, TIMEOUT);
    assert_eq!(got.len(), 10, "{got:?}");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.seq(), i as u64);
        assert_eq!(d.from, remote);
        assert_eq!(
            d.tos,
            Some(EF_TOS | 0b01),
            "traffic class DSCP 46, ECN kept"
        );
    }
    wait_judged(ebpf, local, 19);
    assert!(rx.queued().is_empty());
    assert!(rx_unopened.queued().is_empty());

    let ph = ebpf.pinhole(local);
    assert_eq!(ph.num("packets"), 10);
    assert_eq!(ph.num("bytes"), 10 * frame_len(false));
    assert_eq!(ph.num("dropped_wrong_source"), 9);
    assert_eq!(ph.str("remote"), Some("[fd00:99::1]:4000"));
    let c = ebpf.counters();
    assert_eq!(c.get("passed"), 10);
    assert_eq!(c.get("wrong_source"), 9);
    assert_eq!(c.get("no_pinhole"), 4);
}

/// Reads a counter of `/proc/net/snmp`'s `Udp:` (IPv4) or `/proc/net/snmp6` (IPv6) table in
/// namespace `ns`.
fn udp_snmp(ns: &str, v6: bool, name: &str) -> u64 {
    let out = rtpedge_tests::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "cat",
        if v6 {
            "/proc/net/snmp6"
        } else {
            "/proc/net/snmp"
        },
    ]));
    assert!(out.success(), "{out}");
    if v6 {
        let key = format!("Udp6{name}");
        for line in out.stdout.lines() {
            let mut w = line.split_whitespace();
            if w.next() == Some(key.as_str()) {
                return w.next().and_then(|v| v.parse().ok()).expect("number");
            }
        }
        panic!("{key} not in /proc/net/snmp6");
    }
    let udp: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .collect();
    assert_eq!(udp.len(), 2, "{}", out.stdout);
    let names: Vec<&str> = udp[0].split_whitespace().collect();
    let values: Vec<&str> = udp[1].split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("{name} not in {names:?}"));
    values[i].parse().expect("number")
}

/// A G.711-sized RTP packet (PT 0) of stream `ssrc`, sequence number and timestamp from `seq`.
fn rtp_payload(ssrc: u32, seq: u64) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&(seq as u16).to_be_bytes());
    p.extend_from_slice(&((seq as u32) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&numbered_payload(seq)[..160]);
    p
}

fn send_rtp(
    from: &rtpedge_tests::UdpEndpoint,
    to: SocketAddr,
    ssrc: u32,
    seqs: std::ops::Range<u64>,
) {
    for seq in seqs {
        from.send_to(&rtp_payload(ssrc, seq), to);
    }
}

/// The in-kernel fast path between two legs, in one address family: caller and callee both
/// sit in the sender's namespace, the edge (receiving namespace) binds no socket at all, so
/// every packet that arrives was forwarded by XDP itself.
fn fast_path_forwards_spliced_legs(
    test: &str,
    caller: SocketAddr,
    callee: SocketAddr,
    edge_ip: std::net::IpAddr,
) {
    let Some(topo) = loaded_topology(test) else {
        return;
    };
    let ebpf = &topo.ebpf;
    let v6 = caller.is_ipv6();
    // veth hands XDP_TX frames to its peer's XDP receive ring, which is only serviced when
    // the peer runs a native XDP program too (a real NIC just transmits them): give it ours,
    // on a port range that leaves this test's traffic alone.
    let peer_pins = PinRootGuard::new();
    let peer = EbpfCli::new(&peer_pins.0).with_netns(&topo.tx_ns);
    peer.ok(&[
        "load",
        "--iface",
        &topo.tx_if,
        "--mode",
        "native",
        "--no-egress",
        "--ports",
        "60000-60001",
    ]);
    // Packets from a wire carry complete UDP checksums; veth would hand XDP a partial one
    // (checksum offload), which no rewrite can complete. Make the sender compute them.
    let ethtool = rtpedge_tests::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &topo.tx_ns,
        "ethtool",
        "-K",
        &topo.tx_if,
        "tx",
        "off",
    ]));
    assert!(ethtool.success(), "{ethtool}");
    let leg_a = SocketAddr::new(edge_ip, 30000);
    let leg_b = SocketAddr::new(edge_ip, 30002);
    let caller_sock = topo.tx_socket(caller);
    let callee_sock = topo.tx_socket(callee);
    let intruder = topo.tx_socket(SocketAddr::new(callee.ip(), 7777));
    open_pinhole(ebpf, leg_a, &caller.to_string(), "exact", &["--dscp", "46"]);
    open_pinhole(ebpf, leg_b, &callee.to_string(), "exact", &["--dscp", "46"]);
    let (a, b) = (leg_a.to_string(), leg_b.to_string());
    let (to_caller, to_callee) = (caller.to_string(), callee.to_string());
    ebpf.ok(&[
        "pinhole", "forward", "--local", &a, "--via", &b, "--to", &to_callee, "--dscp", "46",
    ]);
    ebpf.ok(&[
        "pinhole", "forward", "--local", &b, "--via", &a, "--to", &to_caller, "--dscp", "46",
    ]);
    let csum_errors_before = udp_snmp(&topo.tx_ns, v6, "InCsumErrors");

    // Until the callee has sent something, the way to it is unknown: that first packet goes up
    // the stack (to the bridge, absent here) and teaches the fast path the next hop.
    send_rtp(&callee_sock, leg_b, 0xb, 99..100);
    wait_judged(ebpf, leg_b, 1);
    assert_eq!(ebpf.counters().get("forward_fallback"), 1);

    const N: u64 = 50;
    // An injector aiming at leg A from the callee's address but another port: dropped by the
    // pinhole, never forwarded, never redirects anything.
    send_rtp(&intruder, leg_a, 0xc, 9000..9010);
    caller_sock.set_tos(0x01); // ECT(1): ECN must survive the DSCP rewrite
    send_rtp(&caller_sock, leg_a, 0xa, 0..N);
    send_rtp(&callee_sock, leg_b, 0xb, 100..100 + N);

    let at_callee = callee_sock.recv_n(N as usize, TIMEOUT);
    let at_caller = caller_sock.recv_n(N as usize, TIMEOUT);
    assert_eq!(
        at_callee.len() as u64,
        N,
        "caller → callee: {at_callee:?}; counters {:?}",
        ebpf.counters()
    );
    assert_eq!(at_caller.len() as u64, N, "callee → caller: {at_caller:?}");
    for (i, d) in at_callee.iter().enumerate() {
        assert_eq!(d.from, leg_b, "leaves from the callee-facing leg");
        assert_eq!(
            d.payload,
            rtp_payload(0xa, i as u64),
            "payload untouched, in order"
        );
        assert_eq!(d.tos, Some(EF_TOS | 0x01), "EF, ECN kept");
    }
    for (i, d) in at_caller.iter().enumerate() {
        assert_eq!(d.from, leg_a, "leaves from the caller-facing leg");
        assert_eq!(d.payload, rtp_payload(0xb, 100 + i as u64));
        assert_eq!(d.tos, Some(EF_TOS));
    }
    assert!(intruder.queued().is_empty());
    assert!(callee_sock.queued().is_empty(), "nothing from the injector");
    // The receiving kernel verified every UDP checksum the fast path rewrote.
    assert_eq!(
        udp_snmp(&topo.tx_ns, v6, "InCsumErrors"),
        csum_errors_before
    );

    let c = ebpf.counters();
    assert_eq!(c.get("forwarded"), 2 * N, "{:?}", c);
    assert_eq!(c.get("forward_fallback"), 1);
    assert_eq!(c.get("wrong_source"), 10);
    let pa = ebpf.pinhole(leg_a);
    assert_eq!(pa.num("packets"), N);
    assert_eq!(pa.num("dropped_wrong_source"), 10);
    assert_eq!(pa.num("tx_packets"), N, "callee → caller left from leg A");
    assert_eq!(pa.num("forwarded_packets"), N);
    // The kernel kept the stream's statistics by the bridge's rules: one sequence space,
    // nothing lost.
    let rtp = &pa.0["forwarded_rtp"];
    assert_eq!(rtp["ssrc"], 0xa, "{rtp}");
    assert_eq!(
        (rtp["expected"].as_u64(), rtp["lost"].as_i64()),
        (Some(N), Some(0)),
        "{rtp}"
    );
    assert_eq!(pa.num("forwarded_bytes"), N * frame_len(!v6));
    assert_eq!(pa.0["forward"]["via"], b.as_str());
    assert_eq!(pa.0["forward"]["to"], to_callee.as_str());
    assert_eq!(ebpf.pinhole(leg_b).num("tx_packets"), N);

    // Closing a pinhole (BYE) stops its direction at once, forwarding entry or not.
    ebpf.ok(&["pinhole", "close", "--local", &a]);
    send_rtp(&caller_sock, leg_a, 0xa, 1000..1010);
    wait_judged(ebpf, leg_a, N + 10 + 10);
    assert!(callee_sock.recv_n(1, Duration::from_millis(300)).is_empty());
    assert_eq!(ebpf.pinhole(leg_a).num("dropped_closed"), 10);

    // A sender that leaves its UDP checksum to offload hands XDP a partial one: the fast path
    // cannot complete it, so such packets go up the stack (where it is completed), never out
    // with a wrong checksum.
    let ethtool = rtpedge_tests::run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &topo.tx_ns,
        "ethtool",
        "-K",
        &topo.tx_if,
        "tx",
        "on",
    ]));
    assert!(ethtool.success(), "{ethtool}");
    let fallback_before = ebpf.counters().get("forward_fallback");
    send_rtp(&callee_sock, leg_b, 0xb, 150..160);
    wait_judged(ebpf, leg_b, 1 + N + 10);
    assert!(caller_sock.recv_n(1, Duration::from_millis(300)).is_empty());
    assert_eq!(
        ebpf.counters().get("forward_fallback"),
        fallback_before + 10
    );
    assert_eq!(ebpf.counters().get("forwarded"), 2 * N);

    // Unforward: media goes up the stack again, where (no bridge here) nothing is listening.
    ebpf.ok(&["pinhole", "unforward", "--local", &b]);
    assert!(ebpf.pinhole(leg_b).0["forward"].is_null());
    send_rtp(&callee_sock, leg_b, 0xb, 2000..2010);
    wait_judged(ebpf, leg_b, 1 + N + 20);
    assert!(caller_sock.recv_n(1, Duration::from_millis(300)).is_empty());
    assert_eq!(ebpf.counters().get("forwarded"), 2 * N);
}

#[test]
fn fast_path_forwards_spliced_legs_ipv4() {
    fast_path_forwards_spliced_legs(
        "fast_path_ipv4",
        v4(TX_V4, 5000),
        v4(TX_V4_OTHER, 6000),
        RX_V4.into(),
    );
}

#[test]
fn fast_path_forwards_spliced_legs_ipv6() {
    fast_path_forwards_spliced_legs(
        "fast_path_ipv6",
        v6(TX_V6, 5000),
        v6(TX_V6_OTHER, 6000),
        RX_V6.into(),
    );
}
