//! The `rtpedge` daemon: wires the session engine to its I/O. One control thread owns the
//! engine and the ng socket (requests are answered in order, no lock around the engine); the
//! bridge's workers carry the media; the CDR writer has its own thread; the XDP data plane is
//! attached (or re-opened from its pins) at start-up and outlives the daemon.
//!
//! Shutdown (SIGTERM, SIGINT): every call is ended with reason `shutdown` and its CDR written
//! before the process exits.

pub mod config;

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use rtpedge_bridge::{Bridge, BridgeConfig};
use rtpedge_dataplane::{Dataplane, FakeDataplane, KernelDataplane, LoadOptions, PinLayout};

use crate::{
    engine::{Engine, EngineConfig, EngineEvent, Timestamp},
    ngserver::NgServer,
    store::{self, writer::CdrWriter},
};

pub use self::config::Config;

/// How long the control loop waits for a datagram before it looks at timers and media events.
const POLL: Duration = Duration::from_millis(20);

/// Chooses the data plane: attach to `--interface`, else reuse a data plane an operator loaded
/// (pinned maps), else run with the bridge's latching as the only enforcement.
fn dataplane(cfg: &Config) -> anyhow::Result<Box<dyn Dataplane + Send>> {
    if cfg.no_xdp {
        tracing::warn!(
            "--no-xdp: the XDP data plane is not used; media is enforced by the userspace bridge only"
        );
        return Ok(Box::new(memory_dataplane(cfg)));
    }
    if let Some(iface) = &cfg.interface {
        let report = rtpedge_dataplane::load(&LoadOptions {
            iface: iface.clone(),
            ports: Some(cfg.ports),
            mode: cfg.xdp_mode.parse().context("xdp mode")?,
            pin_root: cfg.pin_root.clone(),
            egress: true,
        })
        .with_context(|| format!("attaching the XDP data plane to {iface}"))?;
        let what: Vec<String> = report
            .attachments
            .iter()
            .map(|a| format!("{} ({})", a.program, a.mode))
            .collect();
        tracing::info!(
            iface,
            attached = %what.join(", "),
            reused_maps = report.reused_maps,
            already_attached = report.already_attached,
            "XDP data plane ready"
        );
        return Ok(Box::new(report.dataplane));
    }
    match KernelDataplane::open_pinned(&PinLayout::new(&cfg.pin_root).maps_dir()) {
        Ok(dp) => {
            tracing::info!(pin_root = %cfg.pin_root.display(), "using the XDP data plane loaded under the pin root");
            Ok(Box::new(dp))
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no --interface and no loaded data plane: media is enforced by the userspace \
                 bridge only (give --interface IF to attach XDP, or --no-xdp to silence this)"
            );
            Ok(Box::new(memory_dataplane(cfg)))
        }
    }
}

fn memory_dataplane(cfg: &Config) -> FakeDataplane {
    FakeDataplane::new().with_port_range(cfg.ports.0, cfg.ports.1)
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let dp = dataplane(&cfg)?;
    let bridge = Arc::new(
        Bridge::start(BridgeConfig {
            addresses: cfg.media_addresses.clone(),
            port_min: cfg.ports.0,
            port_max: cfg.ports.1,
            workers: cfg.workers,
            media_timeout: cfg.media_timeout,
            ..BridgeConfig::default()
        })
        .context("starting the media bridge")?,
    );
    let writer = CdrWriter::start(
        store::open(&cfg.cdr_db)
            .with_context(|| format!("opening the CDR database {}", cfg.cdr_db))?,
        Timestamp::now().unix_ms,
    )
    .context("starting the CDR writer")?;
    let mut engine = Engine::new(
        EngineConfig {
            offer_timeout: cfg.offer_timeout,
            media_timeout: cfg.media_timeout,
            silent_timeout: cfg.silent_timeout,
            final_timeout: cfg.final_timeout,
            delete_delay: cfg.delete_delay,
            learn_window: cfg.learn_window,
            dscp_audio: cfg.dscp_audio,
            dscp_video: cfg.dscp_video,
            max_calls: cfg.max_calls,
        },
        Arc::clone(&bridge),
        dp,
    );
    let sock =
        UdpSocket::bind(cfg.ng).with_context(|| format!("binding the ng socket {}", cfg.ng))?;
    sock.set_read_timeout(Some(POLL))
        .context("ng socket timeout")?;
    let mut ng = NgServer::new(cfg.advertised_addresses.clone());
    tracing::info!(
        ng = %cfg.ng,
        media = ?cfg.media_addresses,
        ports = %format!("{}-{}", cfg.ports.0, cfg.ports.1),
        cdr = %cfg.cdr_db,
        "rtpedge running"
    );
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let now = Timestamp::now();
                if let Some(reply) = ng.handle(&mut engine, &buf[..n], from, now)
                    && let Err(e) = sock.send_to(&reply, from)
                {
                    tracing::warn!(%from, error = %e, "sending ng reply");
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => tracing::warn!(error = %e, "ng socket"),
        }
        let now = Timestamp::now();
        while let Ok(ev) = bridge.events().try_recv() {
            engine.handle_media_event(now, ev);
        }
        if engine.poll_timeout().is_some_and(|t| t <= now.mono) {
            engine.handle_timeout(now);
        }
        ng.expire(now);
        drain(&mut engine, &writer);
    }
    tracing::info!(
        calls = engine.active_calls(),
        "shutting down: ending every call"
    );
    engine.shutdown(Timestamp::now());
    drain(&mut engine, &writer);
    if !writer.flush(Duration::from_secs(10)) {
        tracing::error!("CDR writer did not finish within 10 s");
    }
    Ok(())
}

fn drain<M: crate::engine::MediaPlane, D: Dataplane>(
    engine: &mut Engine<M, D>,
    writer: &CdrWriter,
) {
    while let Some(ev) = engine.poll_event() {
        match ev {
            EngineEvent::CdrOpened(cdr) | EngineEvent::CdrClosed(cdr) => writer.write(cdr),
        }
    }
}
