//! The `rtpedge` daemon: wires the session engine to its I/O. One control thread owns the
//! engine (no lock around it): it waits on its inputs — the ng socket, which it reads itself,
//! and a doorbell for the rarer ones (HTTP API, event channel, bridge events), forwarded by a
//! small inbox thread — and wakes exactly at the engine's next deadline; requests are answered
//! in order, each batch of them after one bridge flush. The bridge's workers carry the media; the CDR writer has its own thread;
//! the XDP data plane is attached (or re-opened from its pins) at start-up and outlives the
//! daemon.
//!
//! Shutdown (SIGTERM, SIGINT): every call is ended with reason `shutdown` and its CDR written
//! before the process exits.

pub mod config;
pub mod metrics;
pub mod wait;

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::Sender;

use anyhow::Context as _;
use rtpedge_bridge::{Bridge, BridgeConfig};
use rtpedge_dataplane::{Dataplane, FakeDataplane, KernelDataplane, LoadOptions, PinLayout};

use crate::{
    api::{self, ApiAnswer, ApiCall, ApiRequest, ApiState},
    billing::credit::{DenyReason, GrantAnswer, Granted, RequestId},
    billing::{
        Money,
        credit::{CreditConfig, UnreachablePolicy},
    },
    channel::{
        Body, ChannelHub, ChannelServer, HubEvent, Incoming, ServerConfig, SessionId, Target,
    },
    charging::{BillingOut, Charging, ChargingConfig, ChargingError},
    dialog_end::DialogEnder,
    engine::{Engine, EngineConfig, Timestamp},
    ngserver::NgServer,
    services::{self, ServiceError, ServiceRequest},
    store::{self, writer::CdrWriter},
};

pub use self::config::Config;

/// Chooses the data plane: attach to `--interface`, else reuse a data plane an operator loaded
/// (pinned maps), else run with the bridge's latching as the only enforcement.
/// The boolean says whether it is the kernel's.
fn dataplane(cfg: &Config) -> anyhow::Result<(Box<dyn Dataplane + Send>, bool)> {
    if cfg.no_xdp {
        tracing::warn!(
            "--no-xdp: the XDP data plane is not used; media is enforced by the userspace bridge only"
        );
        return Ok((Box::new(memory_dataplane(cfg)), false));
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
        return Ok((Box::new(report.dataplane), true));
    }
    match KernelDataplane::open_pinned(&PinLayout::new(&cfg.pin_root).maps_dir()) {
        Ok(dp) => {
            tracing::info!(pin_root = %cfg.pin_root.display(), "using the XDP data plane loaded under the pin root");
            Ok((Box::new(dp), true))
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no --interface and no loaded data plane: media is enforced by the userspace \
                 bridge only (give --interface IF to attach XDP, or --no-xdp to silence this)"
            );
            Ok((Box::new(memory_dataplane(cfg)), false))
        }
    }
}

fn memory_dataplane(cfg: &Config) -> FakeDataplane {
    FakeDataplane::new().with_port_range(cfg.ports.0, cfg.ports.1)
}

/// Longest the control thread sleeps without looking at the stop flag.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// How often metered calls' byte counts are fed to credit control.
const USAGE_EVERY: Duration = Duration::from_secs(1);

/// Most ng requests handled before their replies are sent (one bridge flush for them all).
const NG_BATCH: usize = 32;

/// Descriptors beyond the media sockets (database, API, event channel, clients).
const FD_SLACK: usize = 4096;

/// Port pairs bound per idle moment when the reserve is short (about 5 µs each).
const RESERVE_SLICE: usize = 32;

/// How long the control loop waits before refilling a short reserve.
const RESERVE_IDLE: Duration = Duration::from_millis(1);

/// Starts the HTTP API on its own thread (a small tokio runtime), with its own CDR store
/// connection for reports.
fn spawn_api(
    addr: SocketAddr,
    cdr_db: &str,
    to_control: Sender<ApiRequest>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let cdrs = store::open(cdr_db).with_context(|| format!("opening {cdr_db} for the HTTP API"))?;
    let state = ApiState {
        to_control,
        cdrs: Arc::new(std::sync::Mutex::new(cdrs)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rtpedge-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    // Bind now, so a taken port stops the daemon at start-up with a clear error.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("binding the HTTP API on {addr}"))?;
    tracing::info!(%addr, "HTTP API listening");
    std::thread::Builder::new()
        .name("rtpedge-http".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(api::serve_on(listener, state)) {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        })
        .context("starting the HTTP API thread")
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let (dp, kernel_dataplane) = dataplane(&cfg)?;
    let fast_path = cfg.fast_path && kernel_dataplane;
    if cfg.fast_path && !kernel_dataplane {
        tracing::warn!("--fast-path needs the XDP data plane: media stays in the userspace bridge");
    } else if fast_path {
        tracing::info!(
            "fast path on: answered calls' RTP is forwarded in the kernel once it flows"
        );
    }
    // Every media port can be a socket at once: in calls, or idle in the reserve.
    let pairs =
        (usize::from(cfg.ports.1.saturating_sub(cfg.ports.0)) / 2 + 1) * cfg.media_addresses.len();
    let fd_limit = raise_fd_limit(2 * pairs + FD_SLACK);
    // Idle pairs held bound: all the range can hold when descriptors allow, else a quarter
    // of them. No reserve at all with 0: every pair is bound on demand and closed at release.
    let reserve_max = if cfg.port_reserve == 0 {
        0
    } else if fd_limit >= 2 * pairs + FD_SLACK {
        pairs
    } else {
        tracing::warn!(
            fd_limit,
            media_ports = 2 * pairs,
            "the descriptor limit is below what the media port range needs: raise it (LimitNOFILE)"
        );
        fd_limit / 8
    };
    let bridge = Arc::new(
        Bridge::start(BridgeConfig {
            addresses: cfg.media_addresses.clone(),
            port_min: cfg.ports.0,
            port_max: cfg.ports.1,
            workers: cfg.workers,
            media_timeout: cfg.media_timeout,
            quarantine: cfg.port_quarantine,
            // The control thread flushes before every ng reply and after every round of its
            // loop: one worker wake-up (and at most one wait) per request, not per command.
            batch_wakes: true,
            reserve: cfg.port_reserve,
            reserve_max,
            ..BridgeConfig::default()
        })
        .context("starting the media bridge")?,
    );
    let mut reserve_missing = bridge.replenish(usize::MAX);
    if reserve_missing > 0 {
        tracing::warn!(
            missing = reserve_missing,
            "media port reserve not filled at start (ports busy or descriptor limit)"
        );
    }
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
            fast_path,
        },
        Arc::clone(&bridge),
        dp,
    );
    let ledger = crate::billing::ledger::open(&cfg.cdr_db)
        .with_context(|| format!("opening the billing ledger in {}", cfg.cdr_db))?;
    let mut charging = Charging::new(
        ChargingConfig {
            default_account: cfg.default_account.clone(),
            credit: CreditConfig {
                slice_seconds: cfg.slice_seconds,
                unreachable: match cfg.fail_open {
                    Some(max) => UnreachablePolicy::FailOpen { max },
                    None => UnreachablePolicy::FailClosed,
                },
                ..CreditConfig::default()
            },
            fraud: cfg.fraud.clone(),
            verifier: cfg.verifier.clone(),
            external: cfg.external_billing,
            ticket_verifier: cfg.ticket_verifier.clone(),
        },
        ledger,
    )
    .context("billing")?;
    let ender = match cfg.end_dialog.clone() {
        Some(ep) => Some(DialogEnder::start(ep).context("starting the dialog-end client")?),
        None => None,
    };
    let mut next_usage = Instant::now() + USAGE_EVERY;
    // The event channel: call events for subscribers, and the external billing system.
    let channel = match cfg.ws {
        Some(bind) => Some(
            ChannelServer::start(ServerConfig {
                bind,
                ..ServerConfig::default()
            })
            .with_context(|| format!("starting the event channel on {bind}"))?,
        ),
        None => None,
    };
    let hub = channel.as_ref().map(ChannelServer::hub);
    let hub_events = match &channel {
        Some(c) => c.events(),
        None => crossbeam_channel::never(),
    };
    if cfg.external_billing {
        // Until a billing system connects, its unreachable policy applies.
        charging.set_billing_connected(Instant::now(), false);
    }
    let mut pending: HashMap<(SessionId, u64), RequestId> = HashMap::new();
    let sock =
        UdpSocket::bind(cfg.ng).with_context(|| format!("binding the ng socket {}", cfg.ng))?;
    sock.set_nonblocking(true).context("ng socket")?;
    let mut ng = NgServer::new(cfg.advertised_addresses.clone())
        .with_account_mapping(cfg.account_mapping.clone());
    tracing::info!(
        ng = %cfg.ng,
        media = ?cfg.media_addresses,
        ports = %format!("{}-{}", cfg.ports.0, cfg.ports.1),
        cdr = %cfg.cdr_db,
        "rtpedge running"
    );
    let (api_tx, api_requests) = crossbeam_channel::unbounded::<ApiRequest>();
    let _api = match cfg.http {
        Some(addr) => Some(spawn_api(addr, &cfg.cdr_db, api_tx)?),
        None => None,
    };
    // The control thread reads the ng socket itself; the rarer inputs come through the inbox.
    let bell = Arc::new(wait::Doorbell::new().context("control doorbell")?);
    let (inbox, inbox_thread) = wait::spawn_inbox(
        api_requests,
        hub_events,
        bridge.events().clone(),
        Arc::clone(&bell),
        Arc::clone(&stop),
    )
    .context("starting the control inbox")?;
    // One buffer per request of a batch (any UDP datagram fits): the batch is read whole, in
    // one recvmmsg, then handled.
    let mut batch = rtpedge_bridge::sys::RecvBatch::with_size(NG_BATCH, 65536);
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(NG_BATCH);
    while !stop.load(Ordering::Relaxed) {
        // Sleep until the next request, other input or engine deadline: timers fire on time
        // (a credit cut must stop media within milliseconds), not at a polling tick.
        let deadline = [
            engine.poll_timeout(),
            charging.poll_timeout(),
            Some(next_usage),
        ]
        .into_iter()
        .flatten()
        .min();
        let mut timeout = deadline.map_or(MAX_WAIT, |t| {
            t.saturating_duration_since(Instant::now()).min(MAX_WAIT)
        });
        if reserve_missing > 0 {
            // Refill the port reserve in idle moments, a slice at a time.
            timeout = timeout.min(RESERVE_IDLE);
        }
        let ready = match wait::wait(sock.as_raw_fd(), &bell, timeout) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "waiting for input");
                std::thread::sleep(Duration::from_millis(10));
                wait::Ready::default()
            }
        };
        if !ready.ng && !ready.inbox {
            // Nothing waiting: bind pairs now rather than while an offer waits.
            reserve_missing = bridge.replenish(RESERVE_SLICE);
        }
        if ready.ng {
            // Every request waiting (up to a batch), then one bridge flush, then the replies:
            // what the requests changed in the bridge is in effect before a reply acknowledges
            // it (a splice forwards, a deleted call forwards nothing).
            let mut received = 0;
            for _ in 0..NG_BATCH {
                match batch.recv(sock.as_raw_fd()) {
                    Ok(n) => {
                        received = n;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // ICMP errors of earlier replies surface here; keep reading.
                        tracing::debug!(error = %e, "ng socket");
                    }
                }
            }
            let now = Timestamp::now();
            ng.handle_batch(
                &mut engine,
                &mut charging,
                (0..received).filter_map(|i| batch.packet(i)),
                now,
                &mut replies,
            );
            if let Err(e) = bridge.flush() {
                tracing::error!(error = %e, "bridge flush");
            }
            for (to, e) in wait::send_all(sock.as_raw_fd(), &replies) {
                tracing::warn!(%to, error = %e, "sending ng reply");
            }
            replies.clear();
        }
        if ready.inbox {
            bell.quiet();
            while let Ok(item) = inbox.try_recv() {
                match item {
                    wait::Inbox::Api(ApiRequest { call, reply }) => {
                        let answer = match call {
                            ApiCall::Service(call_id, req) => ApiAnswer::Service(
                                insert_service(
                                    &mut engine,
                                    &mut charging,
                                    hub.as_ref(),
                                    &call_id,
                                    &req,
                                )
                                .map_err(|e| (e.http_status(), e.code(), e.to_string())),
                            ),
                            other => answer_api(other, &engine, &mut charging, &ng, ender.as_ref()),
                        };
                        // What a service changed in the bridge is in effect before the answer.
                        if let Err(e) = bridge.flush() {
                            tracing::error!(error = %e, "bridge flush");
                        }
                        let _ = reply.send(answer);
                    }
                    wait::Inbox::Hub(ev) => {
                        if let Some(hub) = hub.as_ref() {
                            match ev {
                                HubEvent::Request(inc)
                                    if inc.body.package == "call"
                                        && inc.body.action == "SERVICE" =>
                                {
                                    service_request(inc, hub, &mut engine, &mut charging, &bridge);
                                }
                                HubEvent::Request(inc) if is_charged(&inc) => {
                                    on_charged(inc, true, hub, &mut charging, &writer);
                                }
                                HubEvent::Message(inc) if is_charged(&inc) => {
                                    on_charged(inc, false, hub, &mut charging, &writer);
                                }
                                ev => on_hub_event(ev, hub, &mut charging, &mut pending),
                            }
                        }
                    }
                    wait::Inbox::Media(ev) => engine.handle_media_event(Timestamp::now(), ev),
                }
            }
        }
        let now = Timestamp::now();
        if engine.poll_timeout().is_some_and(|t| t <= now.mono) {
            engine.handle_timeout(now);
        }
        if charging.poll_timeout().is_some_and(|t| t <= now.mono) {
            charging.handle_timeout(now.mono);
        }
        if next_usage <= now.mono {
            next_usage = now.mono + USAGE_EVERY;
            let calls: Vec<String> = charging.metered_calls().map(str::to_string).collect();
            for call in calls {
                if let Ok(r) = engine.query(&call) {
                    let bytes = r
                        .media
                        .iter()
                        .map(|m| {
                            m.from_a.bytes
                                + m.from_b.bytes
                                + m.parties.iter().map(|(_, s)| s.bytes).sum::<u64>()
                        })
                        .sum();
                    charging.on_usage(now.mono, &call, bytes);
                }
            }
        }
        ng.expire(now);
        // Services inserted through ng are announced here.
        publish_services(&mut charging, hub.as_ref());
        drain(
            &mut engine,
            &mut charging,
            &writer,
            hub.as_ref(),
            ender.as_ref(),
        );
        // Timers, cuts and releases of this round reach the bridge now.
        if let Err(e) = bridge.flush() {
            tracing::error!(error = %e, "bridge flush");
        }
        if let Some(hub) = &hub {
            dispatch_billing(&mut charging, hub, &mut pending);
        }
    }
    tracing::info!(
        calls = engine.active_calls(),
        "shutting down: ending every call"
    );
    engine.shutdown(Timestamp::now());
    drain(
        &mut engine,
        &mut charging,
        &writer,
        hub.as_ref(),
        ender.as_ref(),
    );
    if let Err(e) = bridge.flush() {
        tracing::error!(error = %e, "bridge flush");
    }
    if let Some(hub) = &hub {
        dispatch_billing(&mut charging, hub, &mut pending);
    }
    if let Some(c) = channel {
        c.shutdown();
    }
    if !writer.flush(Duration::from_secs(10)) {
        tracing::error!("CDR writer did not finish within 10 s");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = inbox_thread.join();
    Ok(())
}

/// Engine events through charging to the CDR writer; calls charging cut are ended (which
/// produces more events), until nothing is left.
fn drain<M: crate::engine::MediaPlane, D: Dataplane>(
    engine: &mut Engine<M, D>,
    charging: &mut Charging,
    writer: &CdrWriter,
    hub: Option<&ChannelHub>,
    ender: Option<&DialogEnder>,
) {
    loop {
        while let Some(ev) = engine.poll_event() {
            let closing = matches!(ev, crate::engine::EngineEvent::CdrClosed(_));
            if let Some(cdr) = charging.on_engine_event(Instant::now(), ev) {
                // A call cut for lack of credit: its SIP dialog must end too.
                if closing
                    && cdr.end_reason == Some(crate::engine::EndReason::CreditExhausted)
                    && let (Some(ender), Some(to_tag)) = (ender, cdr.to_tag.as_deref())
                {
                    ender.end(&cdr.call_id, &cdr.from_tag, to_tag);
                }
                // The notification (a JSON CDR) is built only when someone subscribed.
                if let Some(hub) = hub.filter(|h| h.has_subscribers("call")) {
                    let event = if cdr.end_at.is_some() {
                        "ended"
                    } else {
                        "answered"
                    };
                    hub.publish(Body::new(
                        "call",
                        "NOTIFY",
                        serde_json::json!({
                            "event": event,
                            "call_id": cdr.call_id,
                            "end_reason": cdr.end_reason.map(|r| r.as_str()),
                            "cdr": api::cdr_json(&cdr),
                        }),
                    ));
                }
                writer.write(cdr);
            }
        }
        let cuts = charging.take_cuts();
        if cuts.is_empty() {
            return;
        }
        let now = Timestamp::now();
        for (call, reason) in cuts {
            if let Err(e) = engine.end_call(now, &call, reason) {
                tracing::warn!(call, error = %e, "ending a cut call");
            }
        }
    }
}

/// Announces the services applied (by any front end) to the channel's `call` subscribers:
/// `NOTIFY` `{"event": "service", ...the service's answer}`.
fn publish_services(charging: &mut Charging, hub: Option<&ChannelHub>) {
    for mut ev in charging.take_service_events() {
        if let Some(hub) = hub {
            ev["event"] = serde_json::json!("service");
            hub.publish(Body::new("call", "NOTIFY", ev));
        }
    }
}

/// Inserts a service into a running call (HTTP API, event channel).
fn insert_service<M: crate::engine::MediaPlane, D: Dataplane>(
    engine: &mut Engine<M, D>,
    charging: &mut Charging,
    hub: Option<&ChannelHub>,
    call_id: &str,
    req: &ServiceRequest,
) -> Result<serde_json::Value, ServiceError> {
    let result = services::handle_service(Timestamp::now(), engine, charging, call_id, req);
    publish_services(charging, hub);
    match result {
        Ok(out) => Ok(out.to_json()),
        Err(e) => {
            tracing::info!(call = call_id, code = e.code(), error = %e, "service refused");
            Err(e)
        }
    }
}

/// A `call`/`SERVICE` request on the event channel: the payload is the HTTP route's body plus
/// `call_id`; answered with the same JSON, or an error frame with the HTTP status as code.
fn service_request<M: crate::engine::MediaPlane, D: Dataplane>(
    inc: Incoming,
    hub: &ChannelHub,
    engine: &mut Engine<M, D>,
    charging: &mut Charging,
    bridge: &Bridge,
) {
    let req_ref = inc.request_ref();
    let p = &inc.body.payload;
    let result = match p["call_id"].as_str() {
        None => Err(ServiceError::BadRequest("\"call_id\" is required".into())),
        Some(call_id) => ServiceRequest::from_json(p)
            .and_then(|req| insert_service(engine, charging, Some(hub), call_id, &req)),
    };
    // What the service changed in the bridge is in effect before the answer.
    if let Err(e) = bridge.flush() {
        tracing::error!(error = %e, "bridge flush");
    }
    let sent = match result {
        Ok(v) => hub.respond(&req_ref, Body::new("call", "SERVICE", v)),
        Err(e) => hub.respond_error(&req_ref, e.http_status(), &format!("{}: {e}", e.code())),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "answering a SERVICE request");
    }
}

fn is_charged(inc: &Incoming) -> bool {
    inc.body.package == "billing" && inc.body.action == "CHARGED"
}

/// `billing`/`CHARGED` `{"call_id", "charge"}`: the external billing system's final charge of
/// a call, which becomes the CDR's `charge` (re-written if the CDR is already closed).
fn on_charged(
    inc: Incoming,
    is_request: bool,
    hub: &ChannelHub,
    charging: &mut Charging,
    writer: &CdrWriter,
) {
    let p = &inc.body.payload;
    let result = match (p["call_id"].as_str(), p["charge"].as_i64()) {
        (Some(call), Some(charge)) if charge >= 0 => {
            if let Some(cdr) = charging.external_charged(call, Money(charge)) {
                writer.write(cdr);
            }
            Ok(())
        }
        _ => Err("CHARGED needs call_id and a non-negative integer charge"),
    };
    if let Err(e) = result {
        tracing::warn!(error = e, "bad CHARGED from the billing system");
    }
    if is_request {
        let req = inc.request_ref();
        let _ = match result {
            Ok(()) => hub.respond(&req, Body::new("billing", "CHARGED", serde_json::json!({}))),
            Err(e) => hub.respond_error(&req, 400, e),
        };
    }
}

/// Sends what charging has for the external billing system: RESERVE requests (their answers
/// come back as hub responses) and USAGE messages.
fn dispatch_billing(
    charging: &mut Charging,
    hub: &ChannelHub,
    pending: &mut HashMap<(SessionId, u64), RequestId>,
) {
    for out in charging.take_outbox() {
        let now = Instant::now();
        match out {
            BillingOut::Reserve(r) => {
                let id = r.request_id;
                let body = Body::new(
                    "billing",
                    "RESERVE",
                    serde_json::to_value(&r).unwrap_or_default(),
                );
                match hub.request(&Target::Billing, body) {
                    Ok(req) => {
                        pending.insert((req.session, req.seq), id);
                    }
                    Err(e) => {
                        tracing::warn!(call = %r.call_id, error = %e, "RESERVE not sent");
                        charging.on_request_failed(now, id);
                    }
                }
            }
            BillingOut::Usage(u) => {
                let body = Body::new(
                    "billing",
                    "USAGE",
                    serde_json::to_value(&u).unwrap_or_default(),
                );
                if let Err(e) = hub.message(&Target::Billing, body) {
                    tracing::warn!(call = %u.call_id, error = %e, "USAGE not sent");
                }
            }
        }
    }
}

/// Reacts to the event channel: the billing system coming and going, its answers to
/// RESERVE, and what it pushes (EXHAUSTED, TOPUP, BLOCK).
fn on_hub_event(
    ev: HubEvent,
    hub: &ChannelHub,
    charging: &mut Charging,
    pending: &mut HashMap<(SessionId, u64), RequestId>,
) {
    let now = Instant::now();
    match ev {
        HubEvent::Connected { role, session, .. } => {
            if role.as_deref() == Some("billing") {
                tracing::info!(%session, "billing system connected");
                charging.set_billing_connected(now, true);
            }
        }
        HubEvent::Disconnected { session, .. } | HubEvent::Closed { session, .. } => {
            let lost: Vec<(SessionId, u64)> = pending
                .keys()
                .filter(|(s, _)| *s == session)
                .cloned()
                .collect();
            let closed = !hub.billing_connected();
            for k in lost {
                if let Some(id) = pending.remove(&k) {
                    charging.on_request_failed(now, id);
                }
            }
            if closed {
                charging.set_billing_connected(now, false);
            }
        }
        HubEvent::Response { request, body } => {
            let Some(id) = pending.remove(&(request.session, request.seq)) else {
                return;
            };
            let p = &body.payload;
            let answer = match body.action.as_str() {
                "GRANT" => GrantAnswer::Granted(Granted {
                    seconds: p["seconds"].as_u64().unwrap_or(0),
                    bytes: p["bytes"].as_u64().unwrap_or(0),
                    amount: Money(p["amount"].as_i64().unwrap_or(0)),
                }),
                _ => GrantAnswer::Denied(DenyReason::Rejected(
                    body.reason.clone().unwrap_or_else(|| body.action.clone()),
                )),
            };
            charging.on_grant(now, id, answer);
        }
        HubEvent::RequestFailed { request, .. } => {
            if let Some(id) = pending.remove(&(request.session, request.seq)) {
                charging.on_request_failed(now, id);
            }
        }
        HubEvent::Request(inc) => on_billing_push(inc, true, hub, charging, now),
        HubEvent::Message(inc) => on_billing_push(inc, false, hub, charging, now),
        HubEvent::PeerError {
            session,
            code,
            reason,
            ..
        } => {
            tracing::warn!(%session, code, reason, "event channel peer error");
        }
    }
}

/// What a billing system pushes: EXHAUSTED (`account` or `call_id`), TOPUP and BLOCK
/// (`account`). Requests are answered with the number of calls affected.
fn on_billing_push(
    inc: Incoming,
    is_request: bool,
    hub: &ChannelHub,
    charging: &mut Charging,
    now: Instant,
) {
    let p = &inc.body.payload;
    let account = p["account"].as_str();
    let call = p["call_id"].as_str();
    let result = match (inc.body.package.as_str(), inc.body.action.as_str()) {
        ("billing", "EXHAUSTED") => Some(charging.exhausted(now, account, call)),
        ("billing", "TOPUP") => account.map(|a| charging.external_topup(now, a)),
        ("billing", "BLOCK") => account.map(|a| charging.external_block(now, a)),
        _ => None,
    };
    if !is_request {
        return;
    }
    let req = inc.request_ref();
    let _ = match result {
        Some(calls) => hub.respond(
            &req,
            Body::new(
                inc.body.package.clone(),
                inc.body.action.clone(),
                serde_json::json!({ "calls": calls }),
            ),
        ),
        None => hub.respond_error(&req, 501, "unknown package/action, or account missing"),
    };
}

/// Answers an HTTP API request from the state the control thread owns.
fn answer_api<M: crate::engine::MediaPlane, D: Dataplane>(
    call: ApiCall,
    engine: &Engine<M, D>,
    charging: &mut Charging,
    ng: &NgServer,
    ender: Option<&DialogEnder>,
) -> ApiAnswer {
    let now = Instant::now();
    let refusal = |e: ChargingError| -> (u16, String) {
        let status = match &e {
            ChargingError::Ledger(l)
                if matches!(l.code(), "no-such-account" | "no-such-tariff") =>
            {
                404
            }
            ChargingError::Ledger(l) if l.is_client_error() => 409,
            ChargingError::Tariff(_) => 400,
            ChargingError::Ledger(_) | ChargingError::Config(_) => 503,
        };
        (status, e.to_string())
    };
    match call {
        ApiCall::ListCalls => ApiAnswer::Calls(
            engine
                .live_reports()
                .into_iter()
                .map(|r| {
                    let reserved = charging.reserved(&r.call_id, now).map(|m| m.0);
                    (r, reserved)
                })
                .collect(),
        ),
        ApiCall::GetCall(id) => ApiAnswer::Call(engine.query(&id).ok()),
        ApiCall::Metrics => {
            let mut text = metrics::render(engine, ng, Some(charging));
            if let Some(e) = ender {
                text.push_str(&e.metrics());
            }
            ApiAnswer::Metrics(text)
        }
        ApiCall::PutTariff(id, spec) => {
            ApiAnswer::Tariff(charging.put_tariff(&id, &spec).map_err(refusal))
        }
        ApiCall::PutAccount(id, spec) => {
            ApiAnswer::Account(charging.put_account(&id, &spec).map_err(refusal))
        }
        ApiCall::GetAccount(id) => ApiAnswer::Account(charging.account(&id).map_err(refusal)),
        ApiCall::Topup(id, amount) => {
            ApiAnswer::Account(charging.topup(now, &id, Money(amount)).map_err(refusal))
        }
        ApiCall::Block(id) => ApiAnswer::Account(charging.block(now, &id).map_err(refusal)),
        ApiCall::AddTokens(id, n) => {
            ApiAnswer::Account(charging.add_tokens(&id, n).map_err(refusal))
        }
        ApiCall::Service(..) => ApiAnswer::Service(Err((
            503,
            "unavailable",
            "services are handled by the control loop".into(),
        ))),
    }
}

/// Raises the descriptor limit toward `wanted` (each media port is a socket): past the hard
/// limit when privileged, else to the hard limit. Returns the limit in effect.
fn raise_fd_limit(wanted: usize) -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let wanted = libc::rlim_t::try_from(wanted).unwrap_or(libc::rlim_t::MAX);
    // SAFETY: getrlimit/setrlimit on this process with valid structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < wanted {
            let above = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted.max(r.rlim_max),
            };
            let to_hard = libc::rlimit {
                rlim_cur: wanted.min(r.rlim_max),
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &above) == 0 {
                r = above;
            } else if libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard) == 0 {
                r = to_hard;
            }
        }
    }
    usize::try_from(r.rlim_cur).unwrap_or(usize::MAX)
}
