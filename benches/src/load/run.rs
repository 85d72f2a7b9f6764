//! A whole media measurement: set calls up, run one fixed-rate step or a search, tear the
//! calls down. In a search, a step that loses packets (or leaves a backlog at the relay) is
//! followed by fresh calls: a relay that gives up on overloaded sockets for good (rtpengine
//! 10.5 does, after about a second of overload) would otherwise fail every later step, and the
//! search would measure that instead of its capacity.

use std::{net::IpAddr, net::SocketAddr, time::Duration};

use rtpedge_bridge::Bridge;
use serde::Serialize;

use super::{
    calls::{BridgeCalls, NgCalls, Timing},
    cpu::RelayCpu,
    search::{Limit, Outcome, Search, SearchConfig},
    traffic::{self, Endpoints, Receiver, StepConfig, StepReport},
};
use crate::{Error, rtp::G711_20MS_PAYLOAD};

/// Where the calls go.
pub enum Target<'b> {
    /// An external relay speaking ng.
    Ng(SocketAddr),
    /// A bridge in this process.
    InProcess(&'b Bridge),
}

impl Target<'_> {
    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Target::Ng(a) => format!("ng {a}"),
            Target::InProcess(b) => format!("in-process bridge ({} workers)", b.worker_count()),
        }
    }
}

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub enum Plan {
    /// One step at this aggregate rate.
    Rate(f64),
    /// The highest rate with loss below the threshold.
    Search(SearchConfig),
}

/// Media measurement parameters.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Calls (two streams each).
    pub calls: usize,
    /// Address of the generator's sockets (and of the in-process bridge's legs).
    pub local: IpAddr,
    /// UDP payload bytes.
    pub packet_len: usize,
    /// Packets per stream and turn (`None`: [`traffic::auto_burst`]).
    pub burst: Option<usize>,
    /// Warm-up per step.
    pub warmup: Duration,
    /// Measured interval per step.
    pub duration: Duration,
    /// Longest drain after a step.
    pub drain: Duration,
    /// Pause between steps.
    pub rest: Duration,
    /// Pin the generator's threads here.
    pub pin: Option<usize>,
    /// Loss (percent) at or above which a step fails.
    pub loss_threshold_pct: f64,
    /// Call-id prefix (ng).
    pub prefix: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            calls: 100,
            local: IpAddr::from([127, 0, 0, 1]),
            packet_len: G711_20MS_PAYLOAD,
            burst: None,
            warmup: Duration::from_millis(300),
            duration: Duration::from_secs(2),
            drain: Duration::from_secs(2),
            rest: Duration::from_millis(200),
            pin: None,
            loss_threshold_pct: 0.1,
            prefix: format!("load-{}", std::process::id()),
        }
    }
}

/// The search's conclusion.
#[derive(Clone, Debug, Serialize)]
pub struct SearchSummary {
    /// Highest target rate that passed.
    pub best_target_pps: Option<f64>,
    /// What was delivered at that step.
    pub best_delivered_pps: Option<f64>,
    /// Lowest target rate that failed.
    pub lowest_failed_pps: Option<f64>,
    /// How it failed.
    pub lowest_failed_outcome: Option<Outcome>,
    /// What limits the best rate.
    pub limit: Limit,
    /// The passing step at the best rate.
    pub best_step: Option<StepReport>,
}

/// A whole measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MediaReport {
    /// Which relay.
    pub relay: String,
    /// Calls per set.
    pub calls: usize,
    /// Streams per set (two per call).
    pub streams: usize,
    /// Packet size (UDP payload).
    pub packet_bytes: usize,
    /// First call setup.
    pub setup: Timing,
    /// Times the calls were replaced by fresh ones after a failed step.
    pub fresh_call_sets: u32,
    /// Every step, in order.
    pub steps: Vec<StepReport>,
    /// The search's conclusion (search only).
    pub search: Option<SearchSummary>,
    /// Teardown of the last set.
    pub teardown: Timing,
}

enum Calls<'b> {
    Ng(NgCalls),
    Bridge(BridgeCalls<'b>),
}

fn setup<'b>(
    target: &Target<'b>,
    cfg: &MediaConfig,
    set: u32,
) -> Result<(Calls<'b>, Endpoints, Timing), Error> {
    match target {
        Target::Ng(ng) => {
            let prefix = format!("{}-s{set}", cfg.prefix);
            let (c, e, t) = NgCalls::setup(*ng, cfg.calls, cfg.local, &prefix)?;
            Ok((Calls::Ng(c), e, t))
        }
        Target::InProcess(b) => {
            let (c, e, t) = BridgeCalls::setup(b, cfg.calls, cfg.local)?;
            Ok((Calls::Bridge(c), e, t))
        }
    }
}

fn teardown(calls: Calls<'_>) -> Timing {
    match calls {
        Calls::Ng(c) => c.teardown(),
        Calls::Bridge(c) => c.teardown(),
    }
}

/// Runs a measurement with the socket receiver; `on_step` sees each step as it completes
/// (progress output).
pub fn run_media(
    target: &Target<'_>,
    cfg: &MediaConfig,
    plan: Plan,
    cpu: &RelayCpu,
    on_step: impl FnMut(&StepReport),
) -> Result<MediaReport, Error> {
    run_media_with(target, cfg, plan, cpu, &mut Receiver::Sockets, on_step)
}

/// Runs a measurement, receiving through `receiver` (the sockets, or the XDP sink).
pub fn run_media_with(
    target: &Target<'_>,
    cfg: &MediaConfig,
    plan: Plan,
    cpu: &RelayCpu,
    receiver: &mut Receiver<'_>,
    mut on_step: impl FnMut(&StepReport),
) -> Result<MediaReport, Error> {
    if cfg.calls == 0 {
        return Err(Error::Invalid("no calls".into()));
    }
    let (mut calls, mut eps, setup_timing) = setup(target, cfg, 0)?;
    let mut report = MediaReport {
        relay: target.describe(),
        calls: cfg.calls,
        streams: eps.streams(),
        packet_bytes: cfg.packet_len,
        setup: setup_timing,
        fresh_call_sets: 0,
        steps: Vec::new(),
        search: None,
        teardown: Timing::default(),
    };
    let step_cfg = |step: u32, rate: f64, streams: usize| StepConfig {
        step,
        rate,
        warmup: cfg.warmup,
        duration: cfg.duration,
        burst: cfg
            .burst
            .unwrap_or_else(|| traffic::auto_burst(rate, streams)),
        packet_len: cfg.packet_len,
        drain: cfg.drain,
        pin: cfg.pin,
        loss_threshold_pct: cfg.loss_threshold_pct,
    };
    let result = (|| -> Result<(), Error> {
        match plan {
            Plan::Rate(rate) => {
                let r =
                    traffic::run_step_with(&eps, &step_cfg(1, rate, eps.streams()), cpu, receiver)?;
                on_step(&r);
                report.steps.push(r);
            }
            Plan::Search(sc) => {
                let mut search = Search::new(sc);
                let mut step = 1;
                while let Some(rate) = search.next_rate() {
                    let r = traffic::run_step_with(
                        &eps,
                        &step_cfg(step, rate, eps.streams()),
                        cpu,
                        receiver,
                    )?;
                    step += 1;
                    on_step(&r);
                    search.record(rate, r.outcome);
                    let failed = matches!(r.outcome, Outcome::Loss | Outcome::Backlog);
                    report.steps.push(r);
                    if failed && search.next_rate().is_some() {
                        let old =
                            std::mem::replace(&mut calls, Calls::Bridge(BridgeCalls::empty()));
                        teardown(old);
                        std::thread::sleep(cfg.rest);
                        report.fresh_call_sets += 1;
                        let (c, e, _) = setup(target, cfg, report.fresh_call_sets)?;
                        calls = c;
                        eps = e;
                    }
                    std::thread::sleep(cfg.rest);
                }
                let best = search.best();
                let best_step = best.and_then(|b| {
                    report
                        .steps
                        .iter()
                        .find(|s| s.target_pps == b && s.outcome == Outcome::Pass)
                        .cloned()
                });
                report.search = Some(SearchSummary {
                    best_target_pps: best,
                    best_delivered_pps: best_step.as_ref().map(|s| s.delivered_pps),
                    lowest_failed_pps: search.lowest_failure().map(|f| f.0),
                    lowest_failed_outcome: search.lowest_failure().map(|f| f.1),
                    limit: search.limit(),
                    best_step,
                });
            }
        }
        Ok(())
    })();
    report.teardown = teardown(calls);
    result.map(|()| report)
}
