//! The Prometheus text exposition (`GET /metrics`), rendered by the control thread from what it
//! owns: engine counters, ng request counts, the data plane's verdict counters and the bridge.

use std::fmt::Write as _;

use rtpedge_dataplane::Dataplane;

use crate::{
    engine::{Engine, MediaPlane},
    ngserver::NgServer,
};

/// Renders every metric.
pub fn render<M: MediaPlane, D: Dataplane>(
    engine: &Engine<M, D>,
    ng: &NgServer,
    charging: Option<&crate::charging::Charging>,
) -> String {
    let mut out = String::new();
    let st = engine.stats();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "rtpedge_calls_active",
        "gauge",
        "Calls that have not ended.",
        &[(String::new(), engine.active_calls() as u64)],
    );
    metric(
        "rtpedge_calls_created_total",
        "counter",
        "Calls created by an offer.",
        &[(String::new(), st.calls_created)],
    );
    metric(
        "rtpedge_calls_answered_total",
        "counter",
        "Calls answered.",
        &[(String::new(), st.calls_answered)],
    );
    metric(
        "rtpedge_offers_load_limited_total",
        "counter",
        "Offers refused by the call limit.",
        &[(String::new(), st.load_limited)],
    );
    let ended: Vec<(String, u64)> = st
        .ended
        .iter()
        .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n))
        .collect();
    metric(
        "rtpedge_calls_ended_total",
        "counter",
        "Calls ended, by reason.",
        &ended,
    );
    let ng_counts: Vec<(String, u64)> = ng
        .counts()
        .map(|((cmd, result), n)| (format!("{{command=\"{cmd}\",result=\"{result}\"}}"), *n))
        .collect();
    metric(
        "rtpedge_ng_requests_total",
        "counter",
        "ng requests answered, by command and result.",
        &ng_counts,
    );
    if let Some(ch) = charging {
        let c = ch.credit().counters();
        metric(
            "rtpedge_billing_connected",
            "gauge",
            "Whether the billing backend is reachable (1) or its unreachable policy applies (0).",
            &[(String::new(), u64::from(ch.credit().is_connected()))],
        );
        metric(
            "rtpedge_credit_sessions",
            "gauge",
            "Calls under credit control.",
            &[(String::new(), ch.credit().len() as u64)],
        );
        metric(
            "rtpedge_credit_cuts_total",
            "counter",
            "Calls cut by credit control, by reason.",
            &[
                (
                    "{reason=\"credit-exhausted\"}".into(),
                    c.cuts_credit_exhausted,
                ),
                (
                    "{reason=\"account-blocked\"}".into(),
                    c.cuts_account_blocked,
                ),
                (
                    "{reason=\"billing-unavailable\"}".into(),
                    c.cuts_billing_unavailable,
                ),
            ],
        );
        let services: Vec<(String, u64)> = ch
            .service_counts()
            .map(|((service, outcome), n)| {
                (
                    format!("{{service=\"{service}\",outcome=\"{outcome}\"}}"),
                    *n,
                )
            })
            .collect();
        metric(
            "rtpedge_service_requests_total",
            "counter",
            "Mid-call service requests, by service and outcome (applied, or the refusal's code).",
            &services,
        );
    }
    if let Ok(c) = engine.dataplane().counters() {
        let verdicts: Vec<(String, u64)> = c
            .iter()
            .map(|(k, v)| (format!("{{verdict=\"{k}\"}}"), v))
            .collect();
        metric(
            "rtpedge_xdp_packets_total",
            "counter",
            "Packets judged by the XDP data plane, by verdict.",
            &verdicts,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, FakeMedia};

    #[test]
    fn exposition_has_help_type_and_samples() {
        let e = Engine::new(
            EngineConfig::default(),
            FakeMedia::new("127.0.0.1".parse().unwrap()),
            rtpedge_dataplane::FakeDataplane::new(),
        );
        let text = render(&e, &NgServer::new(Vec::new()), None);
        assert!(text.contains("# TYPE rtpedge_calls_active gauge\nrtpedge_calls_active 0\n"));
        assert!(text.contains("rtpedge_xdp_packets_total{verdict=\"no_pinhole\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
