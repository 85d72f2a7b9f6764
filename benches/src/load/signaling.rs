//! The ng signaling benchmark: calls set up and torn down as fast as the relay answers, with a
//! fixed number of requests in flight. Each call is offer → answer → delete with a real SDP
//! (the media is never sent). Each client thread pipelines its share of the in-flight
//! requests over one UDP socket, matching replies to requests by cookie, so one generator core
//! can keep a fast relay busy; a request without a reply is retransmitted with the same cookie
//! after the timeout (the relay's reply cache must answer it), up to three transmissions.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use hdrhistogram::Histogram;
use rtpedge::ng::{self, Value};
use serde::Serialize;

use super::{
    cpu::{self, RelayCpu},
    sdp,
    stamp::now_ns,
    traffic::{Latency, latency_histogram},
};
use crate::Error;

/// Transmissions of one request before it counts as failed.
const ATTEMPTS: u32 = 3;

/// Signaling benchmark parameters.
#[derive(Clone, Debug)]
pub struct SignalingConfig {
    /// The relay's ng address.
    pub ng: SocketAddr,
    /// How long new calls are started.
    pub duration: Duration,
    /// Pings at the same concurrency before the measurement (not counted).
    pub warmup: Duration,
    /// Requests in flight in total (each call has one request in flight at a time).
    pub inflight: usize,
    /// Client threads (the in-flight requests are spread over them).
    pub threads: usize,
    /// Wait before a retransmission.
    pub timeout: Duration,
    /// The media address the SDPs name.
    pub local: IpAddr,
    /// Pin the client threads to this CPU.
    pub pin: Option<usize>,
    /// Call-id prefix.
    pub prefix: String,
}

/// What the signaling benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct SignalingReport {
    /// Calls whose offer, answer and delete all succeeded.
    pub calls: u64,
    /// Calls with a failed request (error reply or no reply).
    pub failed_calls: u64,
    /// Requests answered.
    pub requests: u64,
    /// Retransmissions sent.
    pub retransmits: u64,
    /// Requests that got no reply after every transmission.
    pub timeouts: u64,
    /// Error replies.
    pub errors: u64,
    /// The first error reason seen.
    pub first_error: Option<String>,
    /// From the first request to the last reply.
    pub elapsed_s: f64,
    /// Successful calls (offer + answer + delete) per second.
    pub calls_per_s: f64,
    /// Replies per second.
    pub requests_per_s: f64,
    /// Offer latency (first transmission to reply).
    pub offer_us: Option<Latency>,
    /// Answer latency.
    pub answer_us: Option<Latency>,
    /// Delete latency.
    pub delete_us: Option<Latency>,
    /// Relay CPU per successful call, microseconds.
    pub relay_us_per_call: Option<f64>,
    /// Relay CPU use, percent of one core.
    pub relay_cpu_pct: Option<f64>,
    /// Generator CPU use, percent of one core.
    pub generator_cpu_pct: Option<f64>,
    /// Everything else on the machine, percent of one core (high: a noisy measurement).
    pub other_cpu_pct: Option<f64>,
    /// Requests in flight.
    pub inflight: usize,
    /// Client threads.
    pub threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Warm-up traffic: pings, which allocate nothing on the relay.
    Ping,
    Offer,
    Answer,
    Delete,
    Idle,
}

struct Slot {
    call: u64,
    stage: Stage,
    /// Bumped per request, so that a late reply to an earlier request is recognised.
    generation: u64,
    first_sent_ns: u64,
    last_sent_ns: u64,
    attempts: u32,
    failed: bool,
    datagram: Vec<u8>,
}

struct ThreadOutcome {
    calls: u64,
    failed_calls: u64,
    requests: u64,
    retransmits: u64,
    timeouts: u64,
    errors: u64,
    first_error: Option<String>,
    hists: [Histogram<u64>; 3],
    last_reply_ns: u64,
}

struct Client<'a> {
    cfg: &'a SignalingConfig,
    /// See [`cookie_prefix`].
    cookie_prefix: String,
    /// Pings instead of calls.
    warmup: bool,
    thread: usize,
    sock: UdpSocket,
    next_call: u64,
    out: ThreadOutcome,
    sdp_offer: Vec<u8>,
    sdp_answer: Vec<u8>,
    received_from: Value,
}

impl Client<'_> {
    fn call_id(&self, call: u64) -> String {
        format!("{}-{}-{call}", self.cfg.prefix, self.thread)
    }

    fn request(&self, slot: &Slot) -> Value {
        let call_id = self.call_id(slot.call);
        let from_tag = format!("{call_id}-a");
        let mut d = Value::dict([
            ("call-id", Value::from(call_id.as_str())),
            ("from-tag", Value::from(from_tag.as_str())),
        ]);
        match slot.stage {
            Stage::Offer => {
                d.insert("command", "offer".into());
                d.insert("sdp", Value::from(&self.sdp_offer[..]));
                d.insert("received-from", self.received_from.clone());
            }
            Stage::Answer => {
                d.insert("command", "answer".into());
                d.insert("to-tag", Value::from(format!("{call_id}-b").as_str()));
                d.insert("sdp", Value::from(&self.sdp_answer[..]));
                d.insert("received-from", self.received_from.clone());
            }
            Stage::Delete | Stage::Idle => {
                d.insert("command", "delete".into());
            }
            Stage::Ping => return Value::dict([("command", Value::from("ping"))]),
        }
        d
    }

    /// Builds and sends the slot's current request (a new cookie).
    fn send_new(&mut self, slot: &mut Slot, idx: usize) -> Result<(), Error> {
        slot.generation += 1;
        slot.attempts = 1;
        let dict = self.request(slot);
        slot.datagram.clear();
        slot.datagram.extend_from_slice(
            format!("{}_{idx}_{} ", self.cookie_prefix, slot.generation).as_bytes(),
        );
        ng::encode(&dict, &mut slot.datagram);
        let now = now_ns();
        slot.first_sent_ns = now;
        slot.last_sent_ns = now;
        self.transmit(&slot.datagram)
    }

    fn transmit(&self, datagram: &[u8]) -> Result<(), Error> {
        match self.sock.send(datagram) {
            Ok(_) => Ok(()),
            // A lost request is what retransmission is for.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNREFUSED | libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::Io {
                what: format!("sending an ng request to {}", self.cfg.ng),
                source: e,
            }),
        }
    }

    fn start_call(&mut self, slot: &mut Slot, idx: usize, accepting: bool) -> Result<(), Error> {
        if !accepting {
            slot.stage = Stage::Idle;
            return Ok(());
        }
        slot.call = self.next_call;
        self.next_call += 1;
        slot.stage = if self.warmup {
            Stage::Ping
        } else {
            Stage::Offer
        };
        slot.failed = false;
        self.send_new(slot, idx)
    }

    /// Moves a slot on after its request got an answer (`ok`) or failed for good.
    fn advance(
        &mut self,
        slot: &mut Slot,
        idx: usize,
        ok: bool,
        accepting: bool,
    ) -> Result<(), Error> {
        if !ok {
            slot.failed = true;
        }
        match slot.stage {
            Stage::Offer if ok => {
                slot.stage = Stage::Answer;
                self.send_new(slot, idx)
            }
            // A failed offer or answer still gets its delete: nothing may stay behind.
            Stage::Offer | Stage::Answer => {
                slot.stage = Stage::Delete;
                self.send_new(slot, idx)
            }
            Stage::Delete => {
                if slot.failed {
                    self.out.failed_calls += 1;
                } else {
                    self.out.calls += 1;
                }
                self.start_call(slot, idx, accepting)
            }
            Stage::Ping => self.start_call(slot, idx, accepting),
            Stage::Idle => Ok(()),
        }
    }
}

/// A cookie prefix unique to this process, thread and phase. Relays cache replies by cookie
/// for 30 s or more and answer a repeated cookie from the cache without executing the request:
/// cookies must never repeat across runs, threads, or warm-up and measurement.
fn cookie_prefix(thread: usize, warmup: bool) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:x}.{:x}.{thread}{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        if warmup { "w" } else { "m" }
    )
}

fn parse_cookie(cookie: &[u8], prefix: &str) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(cookie).ok()?;
    let rest = s.strip_prefix(prefix)?.strip_prefix('_')?;
    let mut it = rest.split('_');
    let idx: usize = it.next()?.parse().ok()?;
    let generation: u64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((idx, generation))
}

fn run_thread(
    cfg: &SignalingConfig,
    thread: usize,
    slots: usize,
    warmup: bool,
) -> Result<ThreadOutcome, Error> {
    if let Some(c) = cfg.pin {
        cpu::pin(0, c).map_err(Error::io(format!("pinning a client thread to CPU {c}")))?;
    }
    let local: SocketAddr = match cfg.ng {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).map_err(Error::io("binding the ng client socket"))?;
    sock.connect(cfg.ng)
        .map_err(Error::io(format!("connecting to {}", cfg.ng)))?;
    let _ = crate::mmsg::set_recv_buffer(&sock, 4 << 20);
    let fam = if cfg.local.is_ipv4() { "IP4" } else { "IP6" };
    let mut client = Client {
        cfg,
        cookie_prefix: cookie_prefix(thread, warmup),
        warmup,
        thread,
        sock,
        next_call: 0,
        out: ThreadOutcome {
            calls: 0,
            failed_calls: 0,
            requests: 0,
            retransmits: 0,
            timeouts: 0,
            errors: 0,
            first_error: None,
            hists: [
                latency_histogram(),
                latency_histogram(),
                latency_histogram(),
            ],
            last_reply_ns: 0,
        },
        // The media is never sent: any ports do; distinct ones look like two phones.
        sdp_offer: sdp::audio_sdp(SocketAddr::new(cfg.local, 40_000), 1),
        sdp_answer: sdp::audio_sdp(SocketAddr::new(cfg.local, 40_002), 2),
        received_from: Value::list([
            Value::from(fam),
            Value::from(cfg.local.to_string().as_str()),
        ]),
    };
    let start = now_ns();
    let duration = if warmup { cfg.warmup } else { cfg.duration };
    let end = start + duration.as_nanos() as u64;
    // Nothing may be left hanging: give up waiting for replies this long after the end.
    let hard_end = end + cfg.timeout.as_nanos() as u64 * u64::from(ATTEMPTS) + 1_000_000_000;
    let timeout_ns = cfg.timeout.as_nanos() as u64;
    let mut slots: Vec<Slot> = (0..slots)
        .map(|_| Slot {
            call: 0,
            stage: Stage::Idle,
            generation: 0,
            first_sent_ns: 0,
            last_sent_ns: 0,
            attempts: 0,
            failed: false,
            datagram: Vec::with_capacity(1024),
        })
        .collect();
    for (i, s) in slots.iter_mut().enumerate() {
        client.start_call(s, i, true)?;
    }
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = now_ns();
        let accepting = now < end;
        if slots.iter().all(|s| s.stage == Stage::Idle) || now >= hard_end {
            break;
        }
        // Retransmissions and give-ups.
        let mut next_deadline = now + 10_000_000;
        for (i, s) in slots.iter_mut().enumerate() {
            if s.stage == Stage::Idle {
                continue;
            }
            let due = s.last_sent_ns + timeout_ns;
            if now >= due {
                if s.attempts < ATTEMPTS {
                    s.attempts += 1;
                    s.last_sent_ns = now;
                    client.out.retransmits += 1;
                    client.transmit(&s.datagram)?;
                    next_deadline = next_deadline.min(now + timeout_ns);
                } else {
                    client.out.timeouts += 1;
                    client.advance(s, i, false, accepting)?;
                    next_deadline = next_deadline.min(now_ns() + timeout_ns);
                }
            } else {
                next_deadline = next_deadline.min(due);
            }
        }
        let wait = next_deadline.saturating_sub(now_ns()).max(100_000);
        client
            .sock
            .set_read_timeout(Some(Duration::from_nanos(wait)))
            .map_err(Error::io("setting the ng socket timeout"))?;
        let len = match client.sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue;
            }
            Err(e) => {
                return Err(Error::Io {
                    what: "receiving ng replies".into(),
                    source: e,
                });
            }
        };
        let now = now_ns();
        let Some(datagram) = buf.get(..len) else {
            continue;
        };
        let Ok((cookie, body)) = ng::split_cookie(datagram) else {
            continue;
        };
        let Some((idx, generation)) = parse_cookie(cookie, &client.cookie_prefix) else {
            continue;
        };
        let Some(s) = slots.get_mut(idx) else {
            continue;
        };
        if s.generation != generation || s.stage == Stage::Idle {
            continue; // a reply to a retransmission we already have the answer to
        }
        client.out.requests += 1;
        client.out.last_reply_ns = now;
        let hist = match s.stage {
            Stage::Offer => Some(0),
            Stage::Answer => Some(1),
            Stage::Delete => Some(2),
            Stage::Ping | Stage::Idle => None,
        };
        if let Some(h) = hist {
            client.out.hists[h].saturating_record(now.saturating_sub(s.first_sent_ns).max(1));
        }
        let expected = if s.stage == Stage::Ping { "pong" } else { "ok" };
        let ok = match ng::decode(body) {
            Ok(v) if v.get_str("result") == Some(expected) => true,
            Ok(v) => {
                client.out.errors += 1;
                if client.out.first_error.is_none() {
                    client.out.first_error = Some(format!(
                        "{}: {}",
                        v.get_str("result").unwrap_or("?"),
                        v.get_str("error-reason").unwrap_or_default()
                    ));
                }
                false
            }
            Err(e) => {
                client.out.errors += 1;
                client
                    .out
                    .first_error
                    .get_or_insert_with(|| format!("undecodable reply: {e}"));
                false
            }
        };
        client.advance(s, idx, ok, now < end)?;
    }
    client.out.timeouts += slots.iter().filter(|s| s.stage != Stage::Idle).count() as u64;
    if client.out.last_reply_ns == 0 {
        client.out.last_reply_ns = start;
    }
    Ok(client.out)
}

fn run_threads(cfg: &SignalingConfig, warmup: bool) -> Vec<Result<ThreadOutcome, Error>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.threads)
            .map(|t| {
                let share =
                    cfg.inflight / cfg.threads + usize::from(t < cfg.inflight % cfg.threads);
                std::thread::Builder::new()
                    .name(format!("load-ng{t}"))
                    .spawn_scoped(s, move || run_thread(cfg, t, share, warmup))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a client thread panicked".into()))),
                Err(e) => Err(Error::Io {
                    what: "starting a client thread".into(),
                    source: e,
                }),
            })
            .collect()
    })
}

/// Runs the signaling benchmark: the warm-up (pings at the same concurrency: relay and machine
/// leave idle without anything being allocated), then the measured calls.
pub fn run(cfg: &SignalingConfig, cpu_probe: &RelayCpu) -> Result<SignalingReport, Error> {
    if cfg.threads == 0 || cfg.inflight < cfg.threads {
        return Err(Error::Invalid(format!(
            "{} requests in flight over {} threads: need at least one per thread",
            cfg.inflight, cfg.threads
        )));
    }
    let client = ng::NgClient::new(cfg.ng)
        .map_err(Error::io(format!("ng client for {}", cfg.ng)))?
        .with_timeout(Duration::from_millis(1000));
    client.ping().map_err(|source| Error::Ng {
        what: format!("ping {} (is the relay running?)", cfg.ng),
        source,
    })?;
    if !cfg.warmup.is_zero() {
        for o in run_threads(cfg, true) {
            let o = o?;
            if o.requests == 0 {
                return Err(Error::Relay(format!(
                    "no ping answered during the warm-up{}",
                    o.first_error.map(|e| format!(": {e}")).unwrap_or_default()
                )));
            }
        }
    }
    let cpu0 = cpu_probe.sample();
    let start = now_ns();
    let outcomes = run_threads(cfg, false);
    let cpu1 = cpu_probe.sample();
    let mut hists = [
        latency_histogram(),
        latency_histogram(),
        latency_histogram(),
    ];
    let mut r = SignalingReport {
        calls: 0,
        failed_calls: 0,
        requests: 0,
        retransmits: 0,
        timeouts: 0,
        errors: 0,
        first_error: None,
        elapsed_s: 0.0,
        calls_per_s: 0.0,
        requests_per_s: 0.0,
        offer_us: None,
        answer_us: None,
        delete_us: None,
        relay_us_per_call: None,
        relay_cpu_pct: None,
        generator_cpu_pct: None,
        other_cpu_pct: None,
        inflight: cfg.inflight,
        threads: cfg.threads,
    };
    let mut last = start;
    for o in outcomes {
        let o = o?;
        r.calls += o.calls;
        r.failed_calls += o.failed_calls;
        r.requests += o.requests;
        r.retransmits += o.retransmits;
        r.timeouts += o.timeouts;
        r.errors += o.errors;
        if r.first_error.is_none() {
            r.first_error = o.first_error;
        }
        for (h, oh) in hists.iter_mut().zip(o.hists.iter()) {
            // Same bounds: adding cannot fail.
            let _ = h.add(oh);
        }
        last = last.max(o.last_reply_ns);
    }
    let secs = last.saturating_sub(start) as f64 / 1e9;
    if secs > 0.0 {
        r.elapsed_s = secs;
        r.calls_per_s = r.calls as f64 / secs;
        r.requests_per_s = r.requests as f64 / secs;
    }
    r.offer_us = Latency::of_ns(&hists[0]);
    r.answer_us = Latency::of_ns(&hists[1]);
    r.delete_us = Latency::of_ns(&hists[2]);
    let wall = (now_ns() - start) as f64 / 1e9;
    (r.relay_cpu_pct, r.generator_cpu_pct, r.other_cpu_pct) = cpu0.usage_pct(&cpu1, wall);
    if let (Some(a), Some(b)) = (cpu0.relay, cpu1.relay)
        && r.calls > 0
    {
        r.relay_us_per_call = Some((b - a).max(0.0) * 1e6 / r.calls as f64);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_foreign_ones_are_ignored() {
        let p = cookie_prefix(0, false);
        let c = format!("{p}_15_3");
        assert_eq!(parse_cookie(c.as_bytes(), &p), Some((15, 3)));
        assert_eq!(
            parse_cookie(c.as_bytes(), &cookie_prefix(1, false)),
            None,
            "another thread's"
        );
        assert_eq!(
            parse_cookie(c.as_bytes(), &cookie_prefix(0, true)),
            None,
            "the warm-up's"
        );
        assert_eq!(parse_cookie(format!("{p}_15").as_bytes(), &p), None);
        assert_eq!(parse_cookie(format!("{p}_15_3_9").as_bytes(), &p), None);
        assert_eq!(parse_cookie(format!("{p}15_3").as_bytes(), &p), None);
        assert_eq!(parse_cookie(&[0xff], &p), None);
        // Unique over time (the clock moves between two prefixes of the same thread and phase).
        std::thread::sleep(Duration::from_millis(1));
        assert_ne!(cookie_prefix(0, false), p);
    }
}
