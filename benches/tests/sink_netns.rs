//! `rtpedge-load --sink xdp` end to end: the generator in one network namespace, a relay (the
//! rtpedge daemon, bridge only) in another, a veth pair between them, the XDP receive sink on
//! the generator's end. At a low rate nothing may be lost, and the report must be the socket
//! receiver's: every packet sent is delivered once, to the right stream, with a latency. The
//! sink must be gone from the interface when rtpedge-load exits, also when it fails.
//!
//! Needs root (fails under `CI` without it, skips loudly elsewhere) and the `rtpedge` binary
//! (`cargo build -p rtpedge`; scripts/test builds it).

use std::{
    net::SocketAddr,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use rtpedge_tests::{RX_V4, TX_V4, Topology, require_root, rtpedge_bin, wait_until};
use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_rtpedge-load");

/// The daemon in the relay namespace; killed when dropped.
struct Relay {
    child: Child,
    _dir: TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_relay(topo: &Topology, ng: SocketAddr) -> Relay {
    let dir = std::env::temp_dir().join(format!(
        "rtpedge-sink-netns-{}-{}",
        std::process::id(),
        ng.port()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let child = Command::new("ip")
        .args(["netns", "exec", &topo.rx_ns])
        .arg(rtpedge_bin())
        .args([
            "--ng",
            &ng.to_string(),
            "--media-address",
            &RX_V4.to_string(),
        ])
        .args(["--ports", "31000-31999", "--no-xdp", "--workers", "1"])
        .args(["--delete-delay", "0", "--http", "off", "--ws", "off"])
        .arg("--cdr-db")
        .arg(dir.join("cdr.sqlite"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rtpedge in the relay namespace");
    let relay = Relay {
        child,
        _dir: TempDir(dir),
    };
    let ready = wait_until(Duration::from_secs(10), || {
        Command::new("ip")
            .args(["netns", "exec", &topo.tx_ns])
            .arg(rtpedge_bin())
            .args(["ctl", "--ng", &ng.to_string(), "ping"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(ready, "the relay does not answer ng ping on {ng}");
    relay
}

fn load(topo: &Topology, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &topo.tx_ns, LOAD])
        .args(["--local", &TX_V4.to_string(), "--json", "--quiet"])
        .args(args)
        .output()
        .expect("run rtpedge-load")
}

fn tx_has_xdp(topo: &Topology) -> bool {
    let link = rtpedge_tests::ip(&["-n", &topo.tx_ns, "link", "show", &topo.tx_if]);
    link.split_whitespace().any(|w| w.starts_with("xdp")) || link.contains("prog/xdp")
}

#[test]
fn xdp_sink_reports_a_lossless_run_through_a_relay_on_veth() {
    if !require_root("xdp_sink_reports_a_lossless_run_through_a_relay_on_veth") {
        return;
    }
    let topo = Topology::new();
    let ng: SocketAddr = SocketAddr::new(RX_V4.into(), 22240);
    let _relay = start_relay(&topo, ng);
    let out = load(
        &topo,
        &[
            "--ng",
            &ng.to_string(),
            "--calls",
            "10",
            "--rate",
            "2000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--sink",
            "xdp",
            "--sink-interface",
            &topo.tx_if,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rtpedge-load failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let s = &report["media"]["steps"][0];
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    assert!(
        n("sent") >= 1800,
        "sent only {} in 1 s at 2000/s",
        n("sent")
    );
    assert_eq!(n("received"), n("sent"), "{s}");
    for k in [
        "lost",
        "duplicates",
        "misrouted",
        "foreign",
        "dead_streams",
        "streams_with_loss",
    ] {
        assert_eq!(n(k), 0, "{k}: {s}");
    }
    assert_eq!(s["loss_pct"].as_f64(), Some(0.0));
    assert_eq!(s["outcome"], "pass", "{s}");
    // The warm-up's packets reached the sink too, and were told apart.
    assert!(n("stale") > 0, "{s}");
    let lat = &s["latency_us"];
    assert_eq!(lat["count"].as_u64(), Some(n("received")), "{lat}");
    let p = |k: &str| lat[k].as_f64().unwrap_or_else(|| panic!("{k} in {lat}"));
    assert!(
        p("p50") > 0.0 && p("p50") <= p("p99") && p("p99") <= p("max") * 1.02,
        "{lat}"
    );
    assert!(
        p("max") < 1_000_000.0,
        "a second of latency at 2000/s: {lat}"
    );
    let delivered = s["delivered_pps"].as_f64().unwrap_or_default();
    assert!(
        (delivered - s["offered_pps"].as_f64().unwrap_or_default()).abs() < 1.0,
        "{s}"
    );
    assert!(
        wait_until(Duration::from_secs(2), || !tx_has_xdp(&topo)),
        "the sink is detached after the run"
    );
    assert_eq!(report["media"]["teardown"]["errors"].as_u64(), Some(0));
}

#[test]
fn xdp_sink_is_detached_when_the_run_fails() {
    if !require_root("xdp_sink_is_detached_when_the_run_fails") {
        return;
    }
    let topo = Topology::new();
    // Nothing listens there: the ng ping fails after the sink was attached.
    let out = load(
        &topo,
        &[
            "--ng",
            &SocketAddr::new(RX_V4.into(), 22241).to_string(),
            "--calls",
            "1",
            "--rate",
            "100",
            "--sink",
            "xdp",
            "--sink-interface",
            &topo.tx_if,
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ping"), "{stderr}");
    assert!(
        wait_until(Duration::from_secs(2), || !tx_has_xdp(&topo)),
        "the sink is detached after a failure"
    );
    // And an interface that does not exist is an error, not a silent socket run.
    let out = load(
        &topo,
        &[
            "--ng",
            "10.99.0.2:22241",
            "--rate",
            "100",
            "--sink",
            "xdp",
            "--sink-interface",
            "nosuchif0",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nosuchif0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
