//! `rtpedge-load`: a load generator for RTP relays that speaks rtpengine's ng protocol.
//!
//! ```text
//! rtpedge-load (--ng ADDR:PORT | --in-process) [--calls N] --rate PPS [--duration S]
//! rtpedge-load (--ng ADDR:PORT | --in-process) [--calls N] --search
//! rtpedge-load --ng ADDR:PORT --signaling [--duration S] [--inflight 16]
//!     [--relay-pid PID] [--pin CPU] [--sink xdp --sink-interface IF] [--json] ...
//! ```
//!
//! Media modes set up `--calls` calls with offer/answer on any ng relay (rtpedge, rtpengine),
//! each with a caller and a callee socket on `--local`, and send real RTP (G.711-sized, a
//! stamp with stream, sequence and send time after the RTP header) both ways through the
//! relay at an aggregate `--rate`, or search for the highest rate with loss below
//! `--loss-threshold` (`--search`: doubling, then bisection, a fresh set of calls after each
//! failed step). They report offered and delivered packets/s, loss, reordering, one-way latency
//! percentiles, and with `--relay-pid` the relay's CPU time per forwarded packet, then delete
//! the calls. `--in-process` drives an `rtpedge_bridge::Bridge` in this process instead of a
//! relay (legs provisioned, exact remotes, spliced): the bridge without the daemon; its CPU is
//! that of its worker threads.
//!
//! Relayed packets are received by a receiver thread over the endpoint sockets, or, with
//! `--sink xdp --sink-interface IF` (bench only, root), accounted for and dropped by an XDP
//! program on the generator's interface, so that the generator's core only sends and the
//! measurement reaches the relay's limit rather than the generator's. Same report either way.
//!
//! `--signaling` measures call setup instead: offer → answer → delete per call, with
//! `--inflight` requests in flight, and reports calls/s and each request type's latency.
//!
//! One generator core tops out near 200k packets/s on the machines this was built on: when the
//! relay is faster, compare relay CPU per packet at a fixed rate instead of the maximum rate.
//! The report flags steps where the generator could not offer the rate.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use rtpedge_benches::{
    load::{
        cpu::{self, RelayCpu},
        run::{MediaConfig, MediaReport, Plan, Target, run_media_with},
        search::{Limit, Outcome, SearchConfig},
        signaling::{self, SignalingConfig, SignalingReport},
        sink::XdpSink,
        stamp::MIN_PACKET,
        traffic::{Latency, MAX_BURST, Receiver, StepReport},
    },
    mmsg::MAX_PAYLOAD,
    rtp::G711_20MS_PAYLOAD,
};
use rtpedge_bridge::{Bridge, BridgeConfig};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "rtpedge-load",
    about = "Load generator for RTP relays over the ng protocol: packets/s, loss, latency, relay CPU per packet, signaling rate"
)]
struct Cli {
    /// The relay's ng control address.
    #[arg(
        long,
        required_unless_present = "in_process",
        conflicts_with = "in_process"
    )]
    ng: Option<SocketAddr>,
    /// Drive an rtpedge bridge in this process instead of an external relay.
    #[arg(long)]
    in_process: bool,
    /// Send at this aggregate rate (packets/s, both directions together).
    #[arg(long, required_unless_present_any = ["search", "signaling"], conflicts_with_all = ["search", "signaling"])]
    rate: Option<f64>,
    /// Search for the highest rate with loss below --loss-threshold.
    #[arg(long, conflicts_with = "signaling")]
    search: bool,
    /// Signaling benchmark: offer, answer, delete per call, as fast as the relay answers.
    #[arg(long, requires = "ng")]
    signaling: bool,
    /// Calls (two RTP streams each).
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Measured seconds (per step when searching; of the whole run with --signaling).
    #[arg(long, value_parser = seconds)]
    duration: Option<Duration>,
    /// Unmeasured traffic before each step, seconds.
    #[arg(long, value_parser = seconds_or_zero, default_value = "0.3")]
    warmup: Duration,
    /// Address of the generator's sockets (and of the in-process bridge).
    #[arg(long, default_value = "127.0.0.1")]
    local: IpAddr,
    /// UDP payload bytes (172: RTP header and 20 ms of G.711).
    #[arg(long, default_value_t = G711_20MS_PAYLOAD)]
    size: usize,
    /// Packets per stream and turn (default: each stream sends once per 20 ms).
    #[arg(long)]
    burst: Option<usize>,
    /// Loss in percent at or above which a step fails.
    #[arg(long, default_value_t = 0.1)]
    loss_threshold: f64,
    /// First rate of the search.
    #[arg(long, default_value_t = 10_000.0)]
    search_start: f64,
    /// Highest rate the search tries.
    #[arg(long, default_value_t = 2_000_000.0)]
    search_max: f64,
    /// The search stops when the failing and passing rates are this close (relative).
    #[arg(long, default_value_t = 0.05)]
    search_precision: f64,
    /// Most steps the search runs.
    #[arg(long, default_value_t = 14)]
    search_steps: u32,
    /// The relay's process id: report its CPU time per packet (utime + stime from /proc).
    #[arg(long, conflicts_with = "in_process")]
    relay_pid: Option<u32>,
    /// The CPU the relay is pinned to: report that CPU's busy time per packet instead (the
    /// relay and whatever kernel work runs there, e.g. threaded NAPI and an XDP fast path that
    /// no process's time shows).
    #[arg(long, conflicts_with_all = ["in_process", "relay_pid"])]
    relay_cpu: Option<usize>,
    /// Pin the generator's threads to this CPU.
    #[arg(long)]
    pin: Option<usize>,
    /// In-process: bridge worker threads.
    #[arg(long, default_value_t = 1, requires = "in_process")]
    workers: usize,
    /// In-process: pin the bridge's workers to this CPU.
    #[arg(long, requires = "in_process")]
    pin_bridge: Option<usize>,
    /// In-process: the bridge's port range LO-HI.
    #[arg(long, default_value = "30000-40000", value_parser = port_range)]
    ports: (u16, u16),
    /// Signaling: requests in flight in total.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Signaling: client threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Signaling: seconds of pings at the same concurrency before measuring (brings relay and
    /// machine out of idle; pings allocate nothing).
    #[arg(long, value_parser = seconds_or_zero, default_value = "1")]
    ping_warmup: Duration,
    /// Signaling: wait before retransmitting a request, milliseconds.
    #[arg(long, default_value_t = 1000)]
    ng_timeout_ms: u64,
    /// Where the relayed packets are received. `socket`: a receiver thread reads every
    /// endpoint socket (the generator's core receives everything through the stack). `xdp`:
    /// bench only, an XDP program attached (native mode) to --sink-interface accounts for them
    /// in the kernel (same loss, reordering and latency report; latency taken when XDP sees
    /// the packet) and drops them, so the generator's core only sends. Needs root; detached
    /// when rtpedge-load ends, however it ends.
    #[arg(long, value_enum, default_value_t = SinkMode::Socket, conflicts_with_all = ["in_process", "signaling"])]
    sink: SinkMode,
    /// The interface the relayed packets arrive on (--sink xdp), in rtpedge-load's network
    /// namespace. It must not have another XDP program.
    #[arg(long, required_if_eq("sink", "xdp"))]
    sink_interface: Option<String>,
    /// A name for this run, copied into the JSON.
    #[arg(long)]
    label: Option<String>,
    /// Print the report as one line of JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// How relayed packets are received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SinkMode {
    /// Endpoint sockets, read by a receiver thread.
    Socket,
    /// The XDP receive sink on --sink-interface.
    Xdp,
}

/// A positive, finite number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    let d = seconds_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("{s}: must be a positive number of seconds"));
    }
    Ok(d)
}

fn seconds_or_zero(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s}: must be a number of seconds, at least 0"));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}"))
}

/// Process id and clock: call-ids never repeat across runs (a relay may still know a call).
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected LO-HI"))?;
    let lo: u16 = lo.parse().map_err(|_| format!("{lo:?} is not a port"))?;
    let hi: u16 = hi.parse().map_err(|_| format!("{hi:?} is not a port"))?;
    if lo == 0 || hi <= lo {
        return Err(format!("{s}: need 0 < LO < HI"));
    }
    Ok((lo, hi))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !(MIN_PACKET..=MAX_PAYLOAD).contains(&cli.size) {
        bail!("--size {}: must be {MIN_PACKET} to {MAX_PAYLOAD}", cli.size);
    }
    if let Some(b) = cli.burst
        && !(1..=MAX_BURST).contains(&b)
    {
        bail!("--burst {b}: must be 1 to {MAX_BURST}");
    }
    if let Some(r) = cli.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate {r}: must be a positive number of packets/s");
    }
    if cli.calls == 0 {
        bail!("--calls 0: need at least one call");
    }
    if let Some(pid) = cli.relay_pid {
        cpu::process_seconds(pid)
            .with_context(|| format!("--relay-pid {pid}: cannot read /proc/{pid}/stat"))?;
    }
    if let Some(c) = cli.relay_cpu {
        cpu::core_busy_seconds(c).with_context(|| format!("--relay-cpu {c}"))?;
    }
    if cli.signaling {
        return signaling_main(&cli);
    }
    media_main(&cli)
}

/// Where the external relay's CPU time is read from.
fn relay_probe(cli: &Cli) -> RelayCpu {
    match (cli.relay_pid, cli.relay_cpu) {
        (Some(pid), _) => RelayCpu::Process(pid),
        (None, Some(c)) => RelayCpu::Core(c),
        (None, None) => RelayCpu::None,
    }
}

fn signaling_main(cli: &Cli) -> anyhow::Result<()> {
    let Some(ng) = cli.ng else {
        bail!("--signaling needs --ng");
    };
    let cfg = SignalingConfig {
        ng,
        duration: cli.duration.unwrap_or(Duration::from_secs(3)),
        warmup: cli.ping_warmup,
        inflight: cli.inflight,
        threads: cli.threads,
        timeout: Duration::from_millis(cli.ng_timeout_ms.max(1)),
        local: cli.local,
        pin: cli.pin,
        prefix: format!("sig-{}", run_id()),
    };
    let probe = relay_probe(cli);
    if !cli.quiet {
        eprintln!(
            "rtpedge-load: signaling against ng {ng}: offer+answer+delete for {:.1} s, {} in flight over {} thread(s)",
            cfg.duration.as_secs_f64(),
            cfg.inflight,
            cfg.threads
        );
    }
    let r = signaling::run(&cfg, &probe)
        .with_context(|| format!("signaling benchmark against {ng}"))?;
    if cli.json {
        println!(
            "{}",
            json!({ "mode": "signaling", "label": cli.label, "relay": format!("ng {ng}"), "signaling": r })
        );
    } else {
        print_signaling(&r);
    }
    if r.calls == 0 {
        bail!(
            "no call completed{}",
            r.first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn media_main(cli: &Cli) -> anyhow::Result<()> {
    let cfg = MediaConfig {
        calls: cli.calls,
        local: cli.local,
        packet_len: cli.size,
        burst: cli.burst,
        warmup: cli.warmup,
        duration: cli.duration.unwrap_or(Duration::from_secs(2)),
        pin: cli.pin,
        loss_threshold_pct: cli.loss_threshold,
        prefix: format!("load-{}", run_id()),
        ..MediaConfig::default()
    };
    let plan = match cli.rate {
        Some(r) => Plan::Rate(r),
        None => Plan::Search(SearchConfig {
            start: cli.search_start,
            max: cli.search_max,
            precision: cli.search_precision,
            max_steps: cli.search_steps,
            ..SearchConfig::default()
        }),
    };
    let bridge;
    let (target, probe) = if cli.in_process {
        bridge = Bridge::start(BridgeConfig {
            addresses: vec![cli.local],
            port_min: cli.ports.0,
            port_max: cli.ports.1,
            workers: cli.workers.max(1),
            quarantine: Duration::ZERO,
            media_timeout: Duration::ZERO,
            ..BridgeConfig::default()
        })
        .context("starting the in-process bridge")?;
        if let Some(c) = cli.pin_bridge {
            // A thread names itself once it runs: wait until every worker has.
            let want = bridge.worker_count();
            let mut workers = Vec::new();
            for _ in 0..200 {
                workers = cpu::own_threads("rtpedge-w").context("listing bridge threads")?;
                if workers.len() >= want {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if workers.len() < want {
                bail!(
                    "--pin-bridge: found {} of {want} bridge worker threads",
                    workers.len()
                );
            }
            for (tid, name) in workers {
                cpu::pin(tid, c).with_context(|| format!("pinning {name} to CPU {c}"))?;
            }
        }
        (Target::InProcess(&bridge), RelayCpu::Threads("rtpedge-w"))
    } else {
        let Some(ng) = cli.ng else {
            bail!("give --ng ADDR:PORT or --in-process");
        };
        (Target::Ng(ng), relay_probe(cli))
    };
    if !cli.quiet {
        eprintln!(
            "rtpedge-load: {}, {} calls ({} streams), {}-byte packets, {} s per step",
            target.describe(),
            cfg.calls,
            2 * cfg.calls,
            cfg.packet_len,
            cfg.duration.as_secs_f64()
        );
    }
    let mut sink = match (cli.sink, &cli.sink_interface) {
        (SinkMode::Xdp, Some(iface)) => {
            let sink = XdpSink::attach(iface)
                .with_context(|| format!("--sink xdp on {iface} (needs root)"))?;
            if !cli.quiet {
                eprintln!("rtpedge-load: receiving through the XDP sink on {iface}");
            }
            Some(sink)
        }
        (SinkMode::Xdp, None) => bail!("--sink xdp needs --sink-interface"),
        (SinkMode::Socket, _) => None,
    };
    let mut receiver = match sink.as_mut() {
        Some(s) => Receiver::Sink(s),
        None => Receiver::Sockets,
    };
    let quiet = cli.quiet;
    let report = run_media_with(&target, &cfg, plan, &probe, &mut receiver, |s| {
        if !quiet {
            eprintln!("{}", step_line(s));
        }
    })
    .with_context(|| format!("load against {}", target.describe()))?;
    if cli.json {
        let mode = if cli.search { "search" } else { "rate" };
        println!(
            "{}",
            json!({ "mode": mode, "label": cli.label, "media": report })
        );
    } else {
        print_media(&report);
    }
    Ok(())
}

fn lat(l: &Option<Latency>) -> String {
    l.map_or("-".into(), |l| {
        format!(
            "{:.0}/{:.0}/{:.0}/{:.0}/{:.0} µs",
            l.p50, l.p90, l.p99, l.p999, l.max
        )
    })
}

fn opt(v: Option<f64>, prec: usize, unit: &str) -> String {
    v.map_or("-".into(), |v| format!("{v:.prec$}{unit}"))
}

fn step_line(s: &StepReport) -> String {
    let verdict = match s.outcome {
        Outcome::Pass => "pass",
        Outcome::Loss => "LOSS",
        Outcome::Backlog => "BACKLOG (relay behind)",
        Outcome::GeneratorLimited => "GENERATOR-LIMITED",
    };
    format!(
        "  step {:>2}: target {:>8.0} pps  offered {:>8.0}  delivered {:>8.0}  loss {:.3} %  \
         reordered {}  latency p50/p90/p99/p99.9/max {}  relay {} ({} CPU)  generator {} CPU  \
         burst {}  -> {verdict}",
        s.step,
        s.target_pps,
        s.offered_pps,
        s.delivered_pps,
        s.loss_pct,
        s.reordered,
        lat(&s.latency_us),
        opt(s.relay_us_per_packet, 2, " µs/pkt"),
        opt(s.relay_cpu_pct, 0, " %"),
        opt(s.generator_cpu_pct, 0, " %"),
        s.burst,
    )
}

fn print_media(r: &MediaReport) {
    println!(
        "relay: {}; {} calls ({} streams), {}-byte RTP packets",
        r.relay, r.calls, r.streams, r.packet_bytes
    );
    println!(
        "setup: {} calls in {:.3} s; teardown: {} calls in {:.3} s, {} errors; fresh call sets: {}",
        r.setup.calls,
        r.setup.seconds,
        r.teardown.calls,
        r.teardown.seconds,
        r.teardown.errors,
        r.fresh_call_sets
    );
    for s in &r.steps {
        println!("{}", step_line(s));
        let mut notes = Vec::new();
        if s.misrouted + s.duplicates + s.foreign > 0 {
            notes.push(format!(
                "misrouted {}, duplicates {}, unstamped {}",
                s.misrouted, s.duplicates, s.foreign
            ));
        }
        if s.lost > 0 {
            notes.push(format!(
                "lost {} of {}; {} streams with loss, {} dead; socket drops: relay {}, generator {}",
                s.lost,
                s.sent,
                s.streams_with_loss,
                s.dead_streams,
                s.relay_socket_drops.map_or("?".into(), |d| d.to_string()),
                s.generator_socket_drops
                    .map_or("?".into(), |d| d.to_string()),
            ));
        }
        let kb = |b: Option<u64>| b.map_or("?".into(), |b| (b / 1024).to_string());
        if s.relay_queued_bytes.unwrap_or(0) + s.generator_queued_bytes.unwrap_or(0) > 64 * 1024 {
            notes.push(format!(
                "queued when sending stopped: {} KiB at the relay's sockets, {} KiB at the generator's",
                kb(s.relay_queued_bytes),
                kb(s.generator_queued_bytes)
            ));
        }
        if s.send_errors > 0 {
            notes.push(format!("{} transient send errors", s.send_errors));
        }
        if !notes.is_empty() {
            println!("           {}", notes.join("; "));
        }
    }
    if let Some(sr) = &r.search {
        let limit = match sr.limit {
            Limit::Relay => "the relay (loss above the threshold, or a backlog at its sockets)",
            Limit::Generator => "the generator (it could not offer more): the relay may do more",
            Limit::MaxRate => "--search-max",
            Limit::MinRate => "nothing passed",
            Limit::Steps => "the step budget (--search-steps)",
        };
        println!(
            "search: best {} (delivered {}), lowest failing {}; limited by {limit}",
            opt(sr.best_target_pps, 0, " pps"),
            opt(sr.best_delivered_pps, 0, " pps"),
            opt(sr.lowest_failed_pps, 0, " pps"),
        );
    }
}

fn print_signaling(r: &SignalingReport) {
    println!(
        "signaling: {} calls (offer+answer+delete) in {:.2} s: {:.0} calls/s, {:.0} requests/s; \
         {} failed calls, {} error replies, {} retransmits, {} timeouts",
        r.calls,
        r.elapsed_s,
        r.calls_per_s,
        r.requests_per_s,
        r.failed_calls,
        r.errors,
        r.retransmits,
        r.timeouts
    );
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
    println!(
        "  offer  latency p50/p90/p99/p99.9/max {}",
        lat(&r.offer_us)
    );
    println!(
        "  answer latency p50/p90/p99/p99.9/max {}",
        lat(&r.answer_us)
    );
    println!(
        "  delete latency p50/p90/p99/p99.9/max {}",
        lat(&r.delete_us)
    );
    println!(
        "  relay {} per call ({} CPU), generator {} CPU; {} in flight over {} thread(s)",
        opt(r.relay_us_per_call, 1, " µs"),
        opt(r.relay_cpu_pct, 0, " %"),
        opt(r.generator_cpu_pct, 0, " %"),
        r.inflight,
        r.threads
    );
}
