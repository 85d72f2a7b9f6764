//! A short in-process load: 10 calls spliced on a bridge in this process, 2000 packets/s of
//! stamped RTP both ways for one second. On loopback at that rate nothing may be lost,
//! misrouted or duplicated, every stream must deliver, and the report must be complete.

use std::time::Duration;

use rtpedge_benches::load::{
    cpu::RelayCpu,
    run::{MediaConfig, Plan, Target, run_media},
    search::Outcome,
};
use rtpedge_bridge::{Bridge, BridgeConfig};

#[test]
fn ten_calls_at_2000_pps_lose_nothing() {
    let bridge = Bridge::start(BridgeConfig {
        port_min: 45_000,
        port_max: 45_999,
        workers: 1,
        quarantine: Duration::ZERO,
        media_timeout: Duration::ZERO,
        ..BridgeConfig::default()
    })
    .expect("bridge starts");
    let cfg = MediaConfig {
        calls: 10,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(100),
        ..MediaConfig::default()
    };
    let mut seen = 0;
    let report = run_media(
        &Target::InProcess(&bridge),
        &cfg,
        Plan::Rate(2000.0),
        &RelayCpu::Threads("rtpedge-w"),
        |_| seen += 1,
    )
    .expect("load runs");
    assert_eq!(seen, 1);
    assert_eq!(report.streams, 20);
    let s = &report.steps[0];
    assert!(
        s.sent >= 1800,
        "sent only {} packets in 1 s at 2000/s",
        s.sent
    );
    assert_eq!(s.received, s.sent, "{s:?}");
    assert_eq!((s.lost, s.misrouted, s.duplicates, s.foreign), (0, 0, 0, 0));
    assert_eq!(s.dead_streams, 0);
    assert_eq!(s.outcome, Outcome::Pass);
    let lat = s.latency_us.expect("latency measured");
    assert_eq!(lat.count, s.received);
    assert!(lat.p50 > 0.0 && lat.p50 <= lat.p99 && lat.p99 <= lat.max);
    assert!(s.relay_cpu_s.is_some() && s.generator_cpu_pct.is_some());
    assert_eq!(report.teardown.errors, 0);
    assert_eq!(bridge.leg_count(), 0, "every leg released");
}
