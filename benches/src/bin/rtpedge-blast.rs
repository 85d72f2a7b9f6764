//! `rtpedge-blast`: a UDP packet blaster and a counting receiver for rtpedge's benchmarks and
//! demo.
//!
//! ```text
//! rtpedge-blast send --dst IP:PORT [--src IP:PORT] (--duration SECS | --count N)
//!                    [--size BYTES] [--batch N] [--json]
//! rtpedge-blast recv --bind IP:PORT [--duration SECS] [--idle-exit SECS] [--count N]
//!                    [--show-tos] [--rcvbuf BYTES] [--batch N] [--json]
//! ```
//!
//! `send` sends RTP-shaped datagrams (default 172 bytes: one 20 ms G.711 packet) as fast as
//! batched `sendmmsg` goes and reports what the kernel accepted. `recv` drains a socket with
//! batched `recvmmsg` and reports packets, bytes and packets/s from the first to the last
//! packet; with `--show-tos`, also a count per (source, TOS byte) as the receiver saw them.
//! `recv` writes `listening on ADDR` to stderr once bound, so a script can start the sender
//! only then. With `--json`, the report is one line of JSON on stdout.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use rtpedge_benches::{
    mmsg::{BatchReceiver, BatchSender, MAX_BATCH, MAX_PAYLOAD, is_transient},
    rtp::{G711_20MS_PAYLOAD, RTP_HEADER_LEN},
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "rtpedge-blast",
    about = "UDP packet blaster and counting receiver (batched sendmmsg/recvmmsg)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send RTP-shaped UDP datagrams as fast as possible; report how many were sent.
    Send(SendArgs),
    /// Receive and count UDP datagrams; report packets/s (and per-flow TOS with --show-tos).
    Recv(RecvArgs),
}

#[derive(Args)]
struct SendArgs {
    /// Destination IP:PORT.
    #[arg(long)]
    dst: SocketAddr,
    /// Source IP:PORT to send from (default: any address, an ephemeral port).
    #[arg(long)]
    src: Option<SocketAddr>,
    /// Send for this many seconds.
    #[arg(long, value_parser = seconds, required_unless_present = "count", conflicts_with = "count")]
    duration: Option<Duration>,
    /// Send this many packets.
    #[arg(long)]
    count: Option<u64>,
    /// UDP payload size in bytes (172: RTP header plus 20 ms of G.711).
    #[arg(long, default_value_t = G711_20MS_PAYLOAD)]
    size: usize,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Report as one line of JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RecvArgs {
    /// Local IP:PORT to receive on.
    #[arg(long)]
    bind: SocketAddr,
    /// Stop after this many seconds (from start).
    #[arg(long, value_parser = seconds)]
    duration: Option<Duration>,
    /// Stop once no packet has arrived for this many seconds (after the first one).
    #[arg(long, value_parser = seconds)]
    idle_exit: Option<Duration>,
    /// Stop after this many packets.
    #[arg(long)]
    count: Option<u64>,
    /// Record each packet's source and TOS byte (IP_RECVTOS) and report them per flow.
    #[arg(long)]
    show_tos: bool,
    /// Receive buffer to ask for, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    rcvbuf: usize,
    /// Datagrams per recvmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Report as one line of JSON.
    #[arg(long)]
    json: bool,
}

/// A positive, finite number of seconds.
fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{s}: must be a positive number of seconds"));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}"))
}

/// How long the receiver waits in one call before it checks its stop conditions.
const POLL: Duration = Duration::from_millis(50);

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Send(a) => send(a),
        Cmd::Recv(a) => recv(a),
    }
}

fn send(a: SendArgs) -> anyhow::Result<()> {
    if !(RTP_HEADER_LEN..=MAX_PAYLOAD).contains(&a.size) {
        bail!(
            "--size {}: must be {RTP_HEADER_LEN} to {MAX_PAYLOAD}",
            a.size
        );
    }
    if !(1..=MAX_BATCH).contains(&a.batch) {
        bail!("--batch {}: must be 1 to {MAX_BATCH}", a.batch);
    }
    let mut tx = BatchSender::new(a.src, a.dst, a.size, a.batch)
        .with_context(|| format!("setting up the sender to {}", a.dst))?;
    let batch = tx.batch() as u64;
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + d);
    loop {
        let want = match a.count {
            Some(c) => (c - sent).min(batch),
            None => batch,
        };
        if want == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        match tx.send_batch(want as usize) {
            Ok(n) => sent += n as u64,
            Err(e) if is_transient(&e) => errors += 1,
            Err(e) => return Err(e).with_context(|| format!("sendmmsg to {}", a.dst)),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let pps = rate(sent, elapsed);
    if a.json {
        println!(
            "{}",
            json!({
                "packets": sent,
                "elapsed_s": elapsed,
                "pps": pps,
                "payload_bytes": a.size,
                "errors": errors,
            })
        );
    } else {
        println!(
            "sent {sent} packets ({}-byte UDP payload) to {} in {elapsed:.3} s: {pps:.0} pps \
             ({errors} transient send errors)",
            a.size, a.dst
        );
    }
    Ok(())
}

fn recv(a: RecvArgs) -> anyhow::Result<()> {
    if !(1..=MAX_BATCH).contains(&a.batch) {
        bail!("--batch {}: must be 1 to {MAX_BATCH}", a.batch);
    }
    let mut rx = BatchReceiver::bind(a.bind, a.batch, a.show_tos, POLL)
        .with_context(|| format!("setting up the receiver on {}", a.bind))?;
    rx.set_recv_buffer(a.rcvbuf)?;
    eprintln!("listening on {}", rx.local_addr().unwrap_or(a.bind));

    let start = Instant::now();
    let deadline = a.duration.map(|d| start + d);
    let (mut packets, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut flows: BTreeMap<(Option<SocketAddr>, Option<u8>), u64> = BTreeMap::new();
    loop {
        let n = rx.recv_batch().context("recvmmsg")?;
        let now = Instant::now();
        if n > 0 {
            first.get_or_insert(now);
            last = Some(now);
            packets += n as u64;
            for i in 0..n {
                if a.show_tos {
                    let d = rx.datagram(i);
                    bytes += d.len as u64;
                    *flows.entry((d.source, d.tos)).or_default() += 1;
                } else {
                    bytes += rx.len(i) as u64;
                }
            }
        }
        let done = a.count.is_some_and(|c| packets >= c)
            || deadline.is_some_and(|d| now >= d)
            || matches!((a.idle_exit, last), (Some(idle), Some(l)) if now - l >= idle);
        if done {
            break;
        }
    }
    let elapsed = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => 0.0,
    };
    let pps = rate(packets, elapsed);
    if a.json {
        let flows: Vec<_> = flows
            .iter()
            .map(|((source, tos), n)| {
                json!({
                    "source": source.map(|s| s.to_string()),
                    "tos": tos,
                    "dscp": tos.map(|t| t >> 2),
                    "ecn": tos.map(|t| t & 3),
                    "packets": n,
                })
            })
            .collect();
        let mut out = json!({
            "packets": packets,
            "bytes": bytes,
            "elapsed_s": elapsed,
            "pps": pps,
        });
        if a.show_tos {
            out["flows"] = flows.into();
        }
        println!("{out}");
    } else {
        println!(
            "received {packets} packets, {bytes} bytes, {elapsed:.3} s first to last: {pps:.0} pps"
        );
        for ((source, tos), n) in &flows {
            let source = source.map_or("an unknown source".to_string(), |s| s.to_string());
            let tos = tos.map_or("tos unknown".to_string(), |t| {
                format!("tos 0x{t:02x} (dscp {}, ecn {})", t >> 2, t & 3)
            });
            println!("  {n} packets from {source}, {tos}");
        }
    }
    Ok(())
}

/// Packets per second; 0 when no time passed (no packet, or a single batch).
fn rate(packets: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        packets as f64 / secs
    } else {
        0.0
    }
}
