//! The traffic engine: one sender thread and one receiver thread over the generator's
//! endpoint sockets, for one measurement step.
//!
//! - Sender: a token bucket on the aggregate rate; streams take turns (round robin), each
//!   sending a burst of `burst` packets in one `sendmmsg` from its connected socket. With the
//!   default burst (see [`auto_burst`]) every stream sends once per 20 ms, like a phone, and
//!   bursts only grow at rates beyond 50 packets/s per stream. The sender sleeps at least
//!   [`PACING_QUANTUM_NS`] at a time and then sends what the bucket allows, so the aggregate
//!   goes out in small clumps (at 50k packets/s, about 5 packets, to 5 different streams,
//!   every 100 µs). Packets are built in the `sendmmsg` slots (RTP header, stamp, PCMU
//!   silence): no allocation per packet; the stamp's send time is taken right before the
//!   `sendmmsg` of each burst.
//! - Receiver: level-triggered epoll over every endpoint socket, `recvmmsg` (non-blocking,
//!   batches of 64) on each ready one; per packet it reads the stamp, accounts for the stream
//!   (see [`super::account`]) and records `now - sent` into an HDR histogram allocated before
//!   the step. Or, with [`Receiver::Sink`], no receiver thread: an XDP program on the
//!   generator's interface does that accounting in the kernel and drops the packets (see
//!   [`super::sink`]); the step reads its maps at the end.
//! - Verdict: a step passes when the rate was offered (at least 97 %) and loss stayed below
//!   the threshold; it is *generator-limited* (no verdict about the relay) when the generator
//!   could not offer the rate, when most loss was at its own sockets, or when it ran at 95 % of
//!   its core or more (its receive backlog then turns into apparent loss and latency).
//! - A step is a warm-up (packets stamped [`WARMUP_STEP`], ignored by the receiver) and the
//!   measured interval; CPU readings bracket the measured interval. When the sender is done the
//!   receiver runs on until no packet has arrived for a moment (bounded by `drain`), so packets
//!   still in the relay are not counted as lost.

use std::{
    collections::HashMap,
    fs, io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    account::{StreamRx, Totals},
    cpu::{self, CpuSample, RelayCpu},
    search::Outcome,
    sink::{SinkReading, XdpSink},
    stamp::{MIN_PACKET, Stamp, WARMUP_STEP, now_ns},
};
use crate::{
    Error,
    mmsg::{MAX_PAYLOAD, MmsgRx, MmsgTx, is_transient},
    rtp::RtpStream,
};

/// Largest burst per stream and turn.
pub const MAX_BURST: usize = 64;
/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Batches read from one ready socket before moving on.
const RECV_ROUNDS: usize = 4;
/// The receiver's epoll wait when idle.
const RECV_POLL_MS: libc::c_int = 5;
/// The drain ends after this long without a packet.
const QUIET: Duration = Duration::from_millis(50);
/// A step whose offered rate is below this fraction of the target says nothing about the relay.
pub const OFFERED_MIN_FRACTION: f64 = 0.97;
/// The sender's shortest sleep (see `pause`): 100 µs of sending goes out at once.
pub const PACING_QUANTUM_NS: u64 = 100_000;
/// A relay whose sockets hold more than this much traffic (seconds at the offered rate) when
/// sending stops has fallen behind ([`Outcome::Backlog`]), loss or not.
pub const BACKLOG_LIMIT_S: f64 = 0.02;
/// Kernel memory a queued G.711-sized datagram takes (its skb's truesize, roughly): converts
/// `rx_queue` bytes into datagrams.
pub const QUEUED_DATAGRAM_BYTES: f64 = 1024.0;
/// Generator CPU (percent of one core) at which a step says nothing about the relay either.
pub const GENERATOR_SATURATED_PCT: f64 = 95.0;

/// The generator's sockets: stream `i` is sent from `sockets[i]` (connected to the relay port
/// that signaling gave it) and must arrive at `sockets[peer[i]]`.
pub struct Endpoints {
    /// One socket per stream, non-blocking, connected to the relay.
    pub sockets: Vec<UdpSocket>,
    /// Where each stream must arrive.
    pub peer: Vec<usize>,
    /// The relay address each socket sends to (its relay-side receive socket).
    pub relay: Vec<SocketAddr>,
}

impl Endpoints {
    /// Number of streams (= sockets).
    pub fn streams(&self) -> usize {
        self.sockets.len()
    }

    /// Checks the invariants the engine relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let n = self.sockets.len();
        if n == 0 || self.peer.len() != n || self.relay.len() != n {
            return Err(Error::Invalid(format!(
                "{n} sockets, {} peers, {} relay addresses",
                self.peer.len(),
                self.relay.len()
            )));
        }
        if let Some(bad) = self.peer.iter().find(|p| **p >= n) {
            return Err(Error::Invalid(format!("peer {bad} of {n} sockets")));
        }
        Ok(())
    }
}

/// The default burst: every stream sends once per 20 ms (50 turns per second), as many
/// packets as its share of the rate needs, 1 to [`MAX_BURST`].
pub fn auto_burst(rate: f64, streams: usize) -> usize {
    let per_turn = rate / (streams.max(1) as f64 * 50.0);
    (per_turn.round() as usize).clamp(1, MAX_BURST)
}

/// One step's parameters.
#[derive(Clone, Debug)]
pub struct StepConfig {
    /// Step id (at least 1; 0 is the warm-up).
    pub step: u32,
    /// Aggregate packets per second.
    pub rate: f64,
    /// Traffic before the measured interval (not counted).
    pub warmup: Duration,
    /// The measured interval.
    pub duration: Duration,
    /// Packets per stream and turn (1 to [`MAX_BURST`]).
    pub burst: usize,
    /// UDP payload bytes ([`MIN_PACKET`] to [`MAX_PAYLOAD`]).
    pub packet_len: usize,
    /// Longest wait for packets in flight after the sender stopped.
    pub drain: Duration,
    /// Pin the sender and receiver threads to this CPU.
    pub pin: Option<usize>,
    /// Loss (percent) at or above which the step fails.
    pub loss_threshold_pct: f64,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// From a histogram of nanoseconds; `None` when it is empty.
    pub fn of_ns(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// A histogram for nanosecond latencies: 1 ns to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are valid constants.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What one step measured.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Step id.
    pub step: u32,
    /// Asked-for aggregate rate.
    pub target_pps: f64,
    /// What the generator sent during the measured interval, per second.
    pub offered_pps: f64,
    /// What came back through the relay, per second of the measured interval.
    pub delivered_pps: f64,
    /// Length of the measured interval.
    pub measured_s: f64,
    /// Packets per stream and turn.
    pub burst: usize,
    /// Packets sent in the measured interval.
    pub sent: u64,
    /// Distinct packets of those received.
    pub received: u64,
    /// Sent and never received.
    pub lost: u64,
    /// `lost / sent` in percent.
    pub loss_pct: f64,
    /// Received after a packet with a higher sequence number.
    pub reordered: u64,
    /// Received twice.
    pub duplicates: u64,
    /// Streams with any loss.
    pub streams_with_loss: u64,
    /// Streams that received nothing.
    pub dead_streams: u64,
    /// Arrived at the wrong socket (a relay bug: crossed calls).
    pub misrouted: u64,
    /// Packets of another step (late) or of the warm-up.
    pub stale: u64,
    /// Datagrams without a valid stamp.
    pub foreign: u64,
    /// `sendmmsg` calls that failed transiently (queue full, ICMP error).
    pub send_errors: u64,
    /// Datagrams the kernel dropped at the relay's sockets (receive buffer full), from
    /// `/proc/net/udp`, during the step.
    pub relay_socket_drops: Option<u64>,
    /// Datagrams the kernel dropped at the generator's own sockets during the step: loss the
    /// relay is not to blame for.
    pub generator_socket_drops: Option<u64>,
    /// Bytes queued at the relay's sockets when sending stopped (the relay fell behind).
    pub relay_queued_bytes: Option<u64>,
    /// Bytes queued at the generator's sockets when sending stopped (the generator's receiver
    /// fell behind: latency then measures the generator, not the relay).
    pub generator_queued_bytes: Option<u64>,
    /// One-way latency through the relay.
    pub latency_us: Option<Latency>,
    /// Relay CPU seconds in the measured interval.
    pub relay_cpu_s: Option<f64>,
    /// Relay CPU per forwarded (delivered) packet, microseconds.
    pub relay_us_per_packet: Option<f64>,
    /// Relay CPU use in percent of one core.
    pub relay_cpu_pct: Option<f64>,
    /// Generator CPU use (this process, without in-process relay threads), percent of one core.
    pub generator_cpu_pct: Option<f64>,
    /// Everything else on the machine (other processes, interrupts), percent of one core: a
    /// high value means a noisy measurement.
    pub other_cpu_pct: Option<f64>,
    /// Pass, loss, or generator-limited.
    pub outcome: Outcome,
}

#[derive(Default)]
struct SendOutcome {
    sent: Vec<u64>,
    send_errors: u64,
    measured_ns: u64,
    cpu_start: CpuSample,
    cpu_end: CpuSample,
}

struct RecvOutcome {
    rx: Vec<StreamRx>,
    hist: Histogram<u64>,
    misrouted: u64,
    stale: u64,
    foreign: u64,
    /// Exact mean and maximum latency (ns) where the histogram only has bucket resolution.
    exact_mean_max_ns: Option<(f64, u64)>,
}

impl From<SinkReading> for RecvOutcome {
    fn from(r: SinkReading) -> Self {
        RecvOutcome {
            rx: r.rx,
            hist: r.hist,
            misrouted: r.misrouted,
            stale: r.stale,
            foreign: r.foreign,
            exact_mean_max_ns: r.mean_ns.map(|m| (m, r.max_ns)),
        }
    }
}

/// Where the relayed packets are received and accounted for.
pub enum Receiver<'s> {
    /// A receiver thread reads every endpoint socket (`recvmmsg` over epoll).
    Sockets,
    /// An XDP program on the generator's interface accounts for them and drops them; the
    /// generator reads its maps after the step.
    Sink(&'s mut XdpSink),
}

/// Runs one step over `eps` with the socket receiver and reports it.
pub fn run_step(eps: &Endpoints, cfg: &StepConfig, cpu: &RelayCpu) -> Result<StepReport, Error> {
    run_step_with(eps, cfg, cpu, &mut Receiver::Sockets)
}

/// Runs one step over `eps`, receiving through `receiver`, and reports it. Both receivers
/// fill the same report with the same meaning.
pub fn run_step_with(
    eps: &Endpoints,
    cfg: &StepConfig,
    cpu: &RelayCpu,
    receiver: &mut Receiver<'_>,
) -> Result<StepReport, Error> {
    eps.validate()?;
    if cfg.step == WARMUP_STEP {
        return Err(Error::Invalid("step 0 is the warm-up".into()));
    }
    if !(1..=MAX_BURST).contains(&cfg.burst) {
        return Err(Error::Invalid(format!(
            "burst {}: must be 1 to {MAX_BURST}",
            cfg.burst
        )));
    }
    if !(MIN_PACKET..=MAX_PAYLOAD).contains(&cfg.packet_len) {
        return Err(Error::Invalid(format!(
            "packet of {} bytes: must be {MIN_PACKET} to {MAX_PAYLOAD}",
            cfg.packet_len
        )));
    }
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        return Err(Error::Invalid(format!("rate {}", cfg.rate)));
    }
    let relay_ports: Vec<SocketAddr> = eps.relay.clone();
    let own_ports: Vec<SocketAddr> = eps
        .sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .collect();
    let before = (udp_stats(&relay_ports), udp_stats(&own_ports));
    if let Receiver::Sink(sink) = receiver {
        sink.prepare(cfg.step, eps)?;
    }
    let sink: Option<&XdpSink> = match receiver {
        Receiver::Sink(sink) => Some(&**sink),
        Receiver::Sockets => None,
    };
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    // Packets taken so far by whichever receiver runs.
    let arrived = || -> Result<u64, Error> {
        match sink {
            Some(sink) => sink.progress(),
            None => Ok(progress.load(Ordering::Relaxed)),
        }
    };
    let (sent, recv, backlog) = std::thread::scope(|s| {
        let rx_thread = match sink {
            Some(_) => None,
            None => Some(
                std::thread::Builder::new()
                    .name("load-rx".into())
                    .spawn_scoped(s, || receive(eps, cfg, &stop, &progress))
                    .map_err(Error::io("starting the receiver thread"))?,
            ),
        };
        let sender = std::thread::Builder::new()
            .name("load-tx".into())
            .spawn_scoped(s, || send(eps, cfg, cpu))
            .map_err(Error::io("starting the sender thread"));
        let sent = match sender {
            Ok(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("the sender thread panicked".into()))),
            Err(e) => Err(e),
        };
        // Where packets wait when sending stops: in the relay's queues or in ours.
        let backlog = (udp_stats(&relay_ports), udp_stats(&own_ports));
        // Let packets in flight arrive: until nothing came for QUIET, at most `drain`.
        let deadline = now_ns() + cfg.drain.as_nanos() as u64;
        let mut last = arrived()?;
        let mut last_change = now_ns();
        while sent.is_ok() && now_ns() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            let p = arrived()?;
            if p != last {
                last = p;
                last_change = now_ns();
            } else if now_ns() - last_change >= QUIET.as_nanos() as u64 {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let recv = match (rx_thread, sink) {
            (Some(r), _) => r
                .join()
                .unwrap_or_else(|_| Err(Error::Invalid("the receiver thread panicked".into()))),
            (None, Some(sink)) => sink.read().map(RecvOutcome::from),
            (None, None) => Err(Error::Invalid("no receiver".into())),
        };
        Ok::<_, Error>((sent, recv, backlog))
    })?;
    let (sent, recv, backlog) = (sent?, recv?, backlog);
    let after = (udp_stats(&relay_ports), udp_stats(&own_ports));
    let delta = |a: &io::Result<UdpStats>, b: &io::Result<UdpStats>| match (a, b) {
        (Ok(a), Ok(b)) => Some(b.drops.saturating_sub(a.drops)),
        _ => None,
    };
    let totals = Totals::of(&sent.sent, &recv.rx);
    let secs = sent.measured_ns as f64 / 1e9;
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let relay_cpu_s = match (sent.cpu_start.relay, sent.cpu_end.relay) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    let (relay_cpu_pct, generator_cpu_pct, other_cpu_pct) =
        sent.cpu_start.usage_pct(&sent.cpu_end, secs);
    let offered_pps = per_s(totals.sent);
    let loss_pct = totals.loss_pct();
    let generator_socket_drops = delta(&before.1, &after.1);
    let outcome = verdict(&VerdictInputs {
        target_pps: cfg.rate,
        offered_pps,
        sent: totals.sent,
        received: totals.received,
        lost: totals.lost,
        loss_threshold_pct: cfg.loss_threshold_pct,
        generator_socket_drops,
        generator_cpu_pct,
        relay_queued_bytes: backlog.0.as_ref().ok().map(|s| s.queued_bytes),
    });
    Ok(StepReport {
        step: cfg.step,
        target_pps: cfg.rate,
        offered_pps,
        delivered_pps: per_s(totals.received),
        measured_s: secs,
        burst: cfg.burst,
        sent: totals.sent,
        received: totals.received,
        lost: totals.lost,
        loss_pct,
        reordered: totals.reordered,
        duplicates: totals.duplicates,
        streams_with_loss: totals.streams_with_loss,
        dead_streams: totals.dead_streams,
        misrouted: recv.misrouted,
        stale: recv.stale,
        foreign: recv.foreign,
        send_errors: sent.send_errors,
        relay_socket_drops: delta(&before.0, &after.0),
        relay_queued_bytes: backlog.0.ok().map(|s| s.queued_bytes),
        generator_queued_bytes: backlog.1.ok().map(|s| s.queued_bytes),
        generator_socket_drops,
        latency_us: Latency::of_ns(&recv.hist).map(|mut l| {
            // The sink's histogram has bucket resolution; it keeps the exact mean and maximum.
            if let Some((mean_ns, max_ns)) = recv.exact_mean_max_ns {
                l.mean = mean_ns / 1000.0;
                l.max = max_ns as f64 / 1000.0;
            }
            l
        }),
        relay_cpu_s,
        relay_us_per_packet: relay_cpu_s
            .filter(|_| totals.received > 0)
            .map(|c| c * 1e6 / totals.received as f64),
        relay_cpu_pct,
        generator_cpu_pct,
        other_cpu_pct,
        outcome,
    })
}

/// What a step's verdict is made of.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerdictInputs {
    /// Asked-for rate.
    pub target_pps: f64,
    /// Rate actually sent.
    pub offered_pps: f64,
    /// Packets sent.
    pub sent: u64,
    /// Distinct packets received.
    pub received: u64,
    /// Packets lost.
    pub lost: u64,
    /// Loss (percent) at which the step fails.
    pub loss_threshold_pct: f64,
    /// Drops at the generator's own sockets.
    pub generator_socket_drops: Option<u64>,
    /// Generator CPU, percent of one core.
    pub generator_cpu_pct: Option<f64>,
    /// Bytes queued at the relay's sockets when sending stopped.
    pub relay_queued_bytes: Option<u64>,
}

/// A step's verdict, in this order:
/// 1. [`Outcome::Backlog`]: the relay's sockets hold more than [`BACKLOG_LIMIT_S`] of the
///    offered traffic (and at least 1 MiB): the relay is behind, whatever else happened.
/// 2. [`Outcome::GeneratorLimited`]: the generator offered less than
///    [`OFFERED_MIN_FRACTION`] of the target, most loss was at its own sockets, or it ran at
///    [`GENERATOR_SATURATED_PCT`] or more (its own receive backlog turns into apparent loss).
/// 3. [`Outcome::Loss`]: loss at or above the threshold, or nothing received.
/// 4. [`Outcome::Pass`].
pub fn verdict(v: &VerdictInputs) -> Outcome {
    let loss_pct = if v.sent == 0 {
        0.0
    } else {
        v.lost as f64 * 100.0 / v.sent as f64
    };
    let backlog_limit = (v.offered_pps * BACKLOG_LIMIT_S * QUEUED_DATAGRAM_BYTES).max(1048576.0);
    if v.relay_queued_bytes
        .is_some_and(|q| q as f64 > backlog_limit)
    {
        Outcome::Backlog
    } else if v.offered_pps < v.target_pps * OFFERED_MIN_FRACTION
        || v.generator_socket_drops
            .is_some_and(|d| d > 0 && d * 2 >= v.lost)
        || v.generator_cpu_pct
            .is_some_and(|g| g >= GENERATOR_SATURATED_PCT)
    {
        Outcome::GeneratorLimited
    } else if loss_pct >= v.loss_threshold_pct || v.received == 0 {
        Outcome::Loss
    } else {
        Outcome::Pass
    }
}

/// Sleeps until the next send: at least [`PACING_QUANTUM`], so that a high rate is sent as
/// one round of bursts per quantum (over many streams) rather than a sleep and a wake-up per
/// burst, which on a VM costs more CPU than the send itself. The thread's timer slack is set
/// to 1 µs at start, so the sleep ends on time.
fn pause(ns: u64) {
    std::thread::sleep(Duration::from_nanos(ns.max(PACING_QUANTUM_NS)));
}

fn set_timer_slack_1us() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; failure only means coarser sleeps.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
}

fn send(eps: &Endpoints, cfg: &StepConfig, cpu: &RelayCpu) -> Result<SendOutcome, Error> {
    if let Some(c) = cfg.pin {
        cpu::pin(0, c).map_err(Error::io(format!("pinning the sender to CPU {c}")))?;
    }
    set_timer_slack_1us();
    let n = eps.streams();
    let fds: Vec<RawFd> = eps.sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let mut tx = MmsgTx::new(cfg.burst, cfg.packet_len)?;
    let mut rtp: Vec<RtpStream> = (0..n)
        .map(|i| RtpStream::new(0x5254_0000 ^ i as u32, 160))
        .collect();
    let mut seq = vec![0u64; n];
    let mut out = SendOutcome {
        sent: vec![0; n],
        ..SendOutcome::default()
    };
    let burst = cfg.burst as u64;
    let t0 = now_ns();
    let warm_end = t0 + cfg.warmup.as_nanos() as u64;
    let end = warm_end + cfg.duration.as_nanos() as u64;
    // Capacity for 5 ms of catch-up (a late wake-up from sleep, a preemption), and for a few
    // bursts; a longer stall shows as an offered rate below the target.
    let capacity = (cfg.rate * 0.005).max(4.0 * burst as f64);
    let mut bucket = super::pace::TokenBucket::new(cfg.rate, capacity, t0);
    let mut measuring = false;
    let mut measure_t0 = warm_end;
    let mut cur = 0usize;
    loop {
        let now = now_ns();
        if !measuring && now >= warm_end {
            measuring = true;
            seq.iter_mut().for_each(|s| *s = 0);
            out.cpu_start = cpu.sample();
            measure_t0 = now_ns();
        }
        if now >= end {
            break;
        }
        let wait = bucket.wait_ns(burst, now);
        if wait > 0 {
            let boundary = if measuring { end } else { warm_end };
            pause(wait.min(boundary.saturating_sub(now)));
            continue;
        }
        let step = if measuring { cfg.step } else { WARMUP_STEP };
        let sent_ns = now_ns();
        for i in 0..cfg.burst {
            let slot = tx.slot_mut(i);
            // i < MAX_BURST, so it fits a u16.
            rtp[cur].fill(slot, i as u16);
            Stamp {
                step,
                stream: cur as u32,
                seq: seq[cur] + i as u64,
                sent_ns,
            }
            .write(slot);
        }
        match tx.send(fds[cur], cfg.burst, cfg.packet_len) {
            Ok(k) => {
                bucket.take(k as u64);
                rtp[cur].advance(k as u16);
                seq[cur] += k as u64;
                if measuring {
                    out.sent[cur] += k as u64;
                }
                if k < cfg.burst {
                    out.send_errors += 1;
                }
            }
            Err(e) if is_transient(&e) => {
                // Not sent; the tokens are spent anyway so that one refusing socket does not
                // get retried at once (the offered rate shows the shortfall).
                bucket.take(burst);
                out.send_errors += 1;
            }
            Err(e) => {
                return Err(Error::Io {
                    what: format!("sendmmsg to {}", eps.relay[cur]),
                    source: e,
                });
            }
        }
        cur += 1;
        if cur == n {
            cur = 0;
        }
    }
    out.cpu_end = cpu.sample();
    out.measured_ns = now_ns().saturating_sub(measure_t0);
    if !measuring {
        out.measured_ns = 0;
    }
    Ok(out)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn receive(
    eps: &Endpoints,
    cfg: &StepConfig,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> Result<RecvOutcome, Error> {
    if let Some(c) = cfg.pin {
        cpu::pin(0, c).map_err(Error::io(format!("pinning the receiver to CPU {c}")))?;
    }
    let n = eps.streams();
    // SAFETY: plain syscall; the fd is owned at once.
    let epoll = unsafe {
        OwnedFd::from_raw_fd(
            cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC)).map_err(Error::io("epoll_create1"))?,
        )
    };
    for (i, s) in eps.sockets.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: valid fds and event.
        cvt(unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                s.as_raw_fd(),
                &mut ev,
            )
        })
        .map_err(Error::io("epoll_ctl"))?;
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut rx = MmsgRx::new(RECV_BATCH, false)?;
    let mut out = RecvOutcome {
        rx: vec![StreamRx::default(); n],
        hist: latency_histogram(),
        misrouted: 0,
        stale: 0,
        foreign: 0,
        exact_mean_max_ns: None,
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        // SAFETY: the events buffer is valid for its length.
        let ready = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                if stopping { 0 } else { RECV_POLL_MS },
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io {
                what: "epoll_wait".into(),
                source: e,
            });
        }
        if ready == 0 && stopping {
            break;
        }
        for ev in events.iter().take(ready as usize) {
            let idx = ev.u64 as usize;
            let Some(sock) = eps.sockets.get(idx) else {
                continue;
            };
            for _ in 0..RECV_ROUNDS {
                let got = match rx.recv(sock.as_raw_fd(), libc::MSG_DONTWAIT) {
                    Ok(0) => break,
                    Ok(k) => k,
                    // ICMP errors (ECONNREFUSED) come back on connected sockets: news about
                    // one datagram, not a reason to stop.
                    Err(_) => break,
                };
                let now = now_ns();
                let mut counted = 0u64;
                for i in 0..got {
                    let Some(st) = Stamp::read(rx.payload(i)) else {
                        out.foreign += 1;
                        continue;
                    };
                    if st.step != cfg.step {
                        out.stale += 1;
                        counted += 1;
                        continue;
                    }
                    let stream = st.stream as usize;
                    if stream >= n {
                        out.foreign += 1;
                        continue;
                    }
                    if eps.peer[stream] != idx {
                        out.misrouted += 1;
                        continue;
                    }
                    out.rx[stream].on_packet(st.seq);
                    out.hist
                        .saturating_record(now.saturating_sub(st.sent_ns).max(1));
                    counted += 1;
                }
                progress.fetch_add(counted, Ordering::Relaxed);
                if got < rx.batch() {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// What the kernel says about a set of UDP sockets (`/proc/net/udp` and `udp6`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams dropped (receive buffer full, among others): the last column.
    pub drops: u64,
    /// Bytes waiting in the receive queues now (`rx_queue`).
    pub queued_bytes: u64,
}

/// [`UdpStats`] summed over the sockets bound to `addrs` (IPv4 by address and port, IPv6 by
/// port).
pub fn udp_stats(addrs: &[SocketAddr]) -> io::Result<UdpStats> {
    let want: HashMap<(Option<IpAddr>, u16), ()> = addrs
        .iter()
        .map(|a| ((Some(a.ip()).filter(IpAddr::is_ipv4), a.port()), ()))
        .collect();
    let mut total = UdpStats::default();
    for (path, v4) in [("/proc/net/udp", true), ("/proc/net/udp6", false)] {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let s = stats_in(&text, v4, &want);
        total.drops += s.drops;
        total.queued_bytes += s.queued_bytes;
    }
    Ok(total)
}

fn stats_in(text: &str, v4: bool, want: &HashMap<(Option<IpAddr>, u16), ()>) -> UdpStats {
    let mut total = UdpStats::default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(queues), Some(drops)) = (f.get(1), f.get(4), f.last()) else {
            continue;
        };
        let Some((addr_hex, port_hex)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port_hex, 16) else {
            continue;
        };
        let ip = if v4 {
            // The kernel prints the network-order u32 with %08X: native byte order here.
            u32::from_str_radix(addr_hex, 16)
                .ok()
                .map(|a| IpAddr::from(a.to_ne_bytes()))
        } else {
            None
        };
        if !want.contains_key(&(ip, port)) {
            continue;
        }
        total.drops += drops.parse::<u64>().unwrap_or(0);
        total.queued_bytes += queues
            .split_once(':')
            .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok())
            .unwrap_or(0);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ok = VerdictInputs {
            target_pps: 100_000.0,
            offered_pps: 99_500.0,
            sent: 199_000,
            received: 199_000,
            lost: 0,
            loss_threshold_pct: 0.1,
            generator_socket_drops: Some(0),
            generator_cpu_pct: Some(60.0),
            relay_queued_bytes: Some(0),
        };
        assert_eq!(verdict(&ok), Outcome::Pass);
        let lossy = VerdictInputs {
            received: 198_700,
            lost: 300,
            ..ok
        };
        assert_eq!(verdict(&lossy), Outcome::Loss, "0.15 % lost");
        let slight = VerdictInputs {
            received: 198_900,
            lost: 100,
            ..ok
        };
        assert_eq!(verdict(&slight), Outcome::Pass, "0.05 % lost");
        assert_eq!(
            verdict(&VerdictInputs {
                received: 0,
                lost: 199_000,
                ..ok
            }),
            Outcome::Loss
        );
        // The generator's own trouble: no verdict about the relay.
        for g in [
            VerdictInputs {
                offered_pps: 90_000.0,
                ..ok
            },
            VerdictInputs {
                generator_cpu_pct: Some(97.0),
                ..lossy
            },
            VerdictInputs {
                generator_socket_drops: Some(200),
                ..lossy
            },
        ] {
            assert_eq!(verdict(&g), Outcome::GeneratorLimited, "{g:?}");
        }
        // A relay that is behind is behind, even with a saturated generator; 20 ms of 100k
        // packets/s is about 2 MB of queue.
        let behind = VerdictInputs {
            relay_queued_bytes: Some(3 << 20),
            generator_cpu_pct: Some(99.0),
            ..ok
        };
        assert_eq!(verdict(&behind), Outcome::Backlog);
        let small = VerdictInputs {
            relay_queued_bytes: Some(1 << 20),
            ..ok
        };
        assert_eq!(verdict(&small), Outcome::Pass, "1 MiB at 100k/s is 10 ms");
    }

    #[test]
    fn burst_follows_the_per_stream_rate() {
        assert_eq!(auto_burst(10_000.0, 200), 1);
        assert_eq!(auto_burst(20_000.0, 2_000), 1);
        assert_eq!(auto_burst(200_000.0, 200), 20);
        assert_eq!(auto_burst(1e9, 2), MAX_BURST);
        assert_eq!(auto_burst(1.0, 0), 1);
    }

    #[test]
    fn parses_proc_net_udp() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 0100007F:7530 0100007F:9C40 01 00000000:00000A00 00:00000000 00000000     0        0 1 2 0000000000000000 17\n\
          2: 0100007F:7532 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0000000000000000 5\n\
          3: 0200007F:7530 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0000000000000000 100\n";
        let addr: SocketAddr = "127.0.0.1:30000".parse().unwrap();
        let want: HashMap<_, _> = [((Some(addr.ip()), addr.port()), ())].into_iter().collect();
        if cfg!(target_endian = "little") {
            assert_eq!(
                stats_in(text, true, &want),
                UdpStats {
                    drops: 17,
                    queued_bytes: 0xa00
                }
            );
        }
        let v6 = "sl local\n 1: 00000000000000000000000001000000:7530 x 07 0:10 0 0 0 0 1 2 0 9\n";
        let want6: HashMap<_, _> = [((None, 30000), ())].into_iter().collect();
        assert_eq!(
            stats_in(v6, false, &want6),
            UdpStats {
                drops: 9,
                queued_bytes: 16
            }
        );
    }

    #[test]
    fn udp_stats_of_nothing_is_zero() {
        assert_eq!(udp_stats(&[]).unwrap(), UdpStats::default());
    }
}
