//! `rtpedge ebpf ...`: the operator interface to the data plane. Each invocation is its own
//! process; all state lives in the pinned maps. Output is a readable table, or JSON with
//! `--json` (the keys are a contract: operators and tests parse them).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use rtpedge_dataplane::{
    AttachMode, Dataplane as _, Dscp, ForwardSpec, KernelDataplane, LoadOptions, PinLayout,
    PinholeInfo, PinholeSpec, RateLimit, parse_port_range, parse_remote,
};
use serde_json::{Value, json};

#[derive(Args)]
pub struct EbpfArgs {
    /// Where maps and links are pinned (must be on a bpffs; mounted if needed).
    #[arg(long, global = true, env = "RTPEDGE_PIN_ROOT", default_value = rtpedge_dataplane::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Operate on an interface in this network namespace (as named by `ip netns`), without
    /// leaving the host's mount namespace.
    #[arg(long, global = true)]
    netns: Option<String>,
    #[command(subcommand)]
    cmd: EbpfCmd,
}

#[derive(Subcommand)]
enum EbpfCmd {
    /// Load the programs, attach them to an interface and pin everything (idempotent).
    Load {
        #[arg(long)]
        iface: String,
        /// Media port range, LO-HI (default 30000-40000; kept as is when already loaded).
        #[arg(long)]
        ports: Option<String>,
        /// XDP mode: native, generic or auto (native where the driver supports it).
        #[arg(long, default_value = "auto")]
        mode: String,
        /// Do not attach the TC egress DSCP marker.
        #[arg(long)]
        no_egress: bool,
    },
    /// Attached programs, pinhole count and global counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every pinhole with its counters.
    Pinholes {
        #[arg(long)]
        json: bool,
    },
    /// Open, close, remove or relearn one pinhole.
    Pinhole {
        #[command(subcommand)]
        cmd: PinholeCmd,
    },
    /// Detach from an interface and unpin (maps too, when no interface is left).
    Unload {
        #[arg(long)]
        iface: String,
    },
}

#[derive(Subcommand)]
enum PinholeCmd {
    /// Open (or update) a pinhole.
    Open {
        /// Local address and port media arrives on.
        #[arg(long)]
        local: SocketAddr,
        /// IP:PORT (exact), IP (address), IP or * (learning: restrict to IP, or any).
        #[arg(long)]
        remote: String,
        /// exact, address, learning or any (the bridge latches; for media handover).
        #[arg(long)]
        policy: String,
        /// DSCP to mark passing and sent packets with (0-63).
        #[arg(long)]
        dscp: Option<u8>,
        /// Rate limit PPS/BURST.
        #[arg(long)]
        rate: Option<String>,
        /// Learning window in seconds (learning policy; 0 = no deadline).
        #[arg(long, default_value_t = 10.0)]
        learn_window: f64,
    },
    /// Close a pinhole (kept with its counters; nothing passes).
    Close {
        #[arg(long)]
        local: SocketAddr,
    },
    /// Remove a pinhole with its counters.
    Remove {
        #[arg(long)]
        local: SocketAddr,
    },
    /// Forget a learning pinhole's latched source and learn again (media handover).
    Relearn {
        #[arg(long)]
        local: SocketAddr,
        #[arg(long, default_value_t = 10.0)]
        learn_window: f64,
    },
    /// Forward what passes the pinhole in the kernel (XDP_TX), as the bridge would: out from
    /// VIA (the spliced leg's local address and port) to TO (that leg's remote).
    Forward {
        #[arg(long)]
        local: SocketAddr,
        #[arg(long)]
        via: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        /// DSCP of the forwarded packets (0-63; default: keep theirs).
        #[arg(long)]
        dscp: Option<u8>,
        /// RTP clock rate of the media (jitter of what the kernel forwards).
        #[arg(long, default_value_t = 8000)]
        clock_rate: u32,
        /// SRTP: do not check the (encrypted) RTP padding count.
        #[arg(long)]
        srtp: bool,
    },
    /// Stop forwarding in the kernel: media goes up to the bridge again.
    Unforward {
        #[arg(long)]
        local: SocketAddr,
    },
}

fn window(secs: f64) -> anyhow::Result<Option<Duration>> {
    if !secs.is_finite() || secs < 0.0 {
        bail!("--learn-window {secs}: must be a non-negative number of seconds");
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

pub fn run(args: EbpfArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("rtpedge ebpf needs root (loading BPF programs and opening pinned maps)");
    }
    if let Some(ns) = &args.netns {
        rtpedge_dataplane::enter_netns(ns)?;
    }
    let root = args.pin_root.clone();
    let open = || KernelDataplane::open_pinned(&PinLayout::new(&root).maps_dir());
    match args.cmd {
        EbpfCmd::Load {
            iface,
            ports,
            mode,
            no_egress,
        } => {
            let opts = LoadOptions {
                iface: iface.clone(),
                ports: ports.as_deref().map(parse_port_range).transpose()?,
                mode: mode.parse::<AttachMode>()?,
                pin_root: root.clone(),
                egress: !no_egress,
            };
            let report = rtpedge_dataplane::load(&opts)?;
            let (lo, hi) = report.dataplane.port_range()?;
            let what: Vec<String> = report
                .attachments
                .iter()
                .map(|a| format!("{} ({})", a.program, a.mode))
                .collect();
            if report.already_attached {
                println!(
                    "already attached to {iface}: {}; media ports {lo}-{hi}",
                    what.join(", ")
                );
            } else {
                println!(
                    "attached to {iface}: {}; media ports {lo}-{hi}; maps {} under {}",
                    what.join(", "),
                    if report.reused_maps {
                        "reused"
                    } else {
                        "created"
                    },
                    root.display()
                );
            }
        }
        EbpfCmd::Status { json } => {
            let st = rtpedge_dataplane::status(&root)?;
            let xdp_modes: Vec<&str> = st
                .attachments
                .iter()
                .filter(|a| a.program == "xdp")
                .map(|a| a.mode)
                .collect();
            let mode = match xdp_modes.as_slice() {
                [] => "detached",
                [m, rest @ ..] if rest.iter().all(|r| r == m) => m,
                _ => "mixed",
            };
            if json {
                let counters: serde_json::Map<String, Value> = st
                    .counters
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                let out = json!({
                    "mode": mode,
                    "pinholes": st.pinholes,
                    "counters": counters,
                    "ports": format!("{}-{}", st.port_range.0, st.port_range.1),
                    "pin_root": st.pin_root.display().to_string(),
                    "attachments": st.attachments.iter().map(|a| json!({
                        "iface": a.iface, "program": a.program, "mode": a.mode,
                    })).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("pin root   {}", st.pin_root.display());
                println!("media      ports {}-{}", st.port_range.0, st.port_range.1);
                println!("mode       {mode}");
                for a in &st.attachments {
                    println!("attached   {:<12} {:<10} {}", a.iface, a.program, a.mode);
                }
                println!("pinholes   {}", st.pinholes);
                println!("counters");
                for (k, v) in st.counters.iter() {
                    println!("  {k:<14} {v:>14}");
                }
            }
        }
        EbpfCmd::Pinholes { json } => {
            let dp = open()?;
            let list = dp.pinholes()?;
            if json {
                let arr = list
                    .iter()
                    .map(|p| {
                        Ok(pinhole_json(
                            p,
                            dp.forward(p.local)?,
                            dp.forwarded_rtp(p.local)?,
                        ))
                    })
                    .collect::<anyhow::Result<Vec<Value>>>()?;
                println!("{}", serde_json::to_string_pretty(&arr)?);
            } else {
                println!(
                    "{:<24} {:<24} {:<9} {:<7} {:>4} {:>10} {:>12} {:>9}",
                    "LOCAL", "REMOTE", "POLICY", "STATE", "DSCP", "PACKETS", "BYTES", "DROPPED"
                );
                for p in &list {
                    println!(
                        "{:<24} {:<24} {:<9} {:<7} {:>4} {:>10} {:>12} {:>9}",
                        p.local.to_string(),
                        p.remote_display(),
                        p.policy.name(),
                        p.state.name(),
                        p.dscp.map_or("-".to_string(), |d| d.to_string()),
                        p.counters.packets,
                        p.counters.bytes,
                        p.counters.dropped()
                    );
                }
            }
        }
        EbpfCmd::Pinhole { cmd } => {
            let mut dp = open()?;
            match cmd {
                PinholeCmd::Open {
                    local,
                    remote,
                    policy,
                    dscp,
                    rate,
                    learn_window,
                } => {
                    let spec = PinholeSpec {
                        local,
                        remote: parse_remote(&policy, &remote, window(learn_window)?)?,
                        dscp: dscp.map(Dscp::new).transpose()?,
                        rate: rate.as_deref().map(str::parse::<RateLimit>).transpose()?,
                    };
                    dp.open_pinhole(&spec)
                        .with_context(|| format!("opening pinhole {local}"))?;
                    println!("opened {local} ({policy} {remote})");
                }
                PinholeCmd::Close { local } => {
                    dp.close_pinhole(local)?;
                    println!("closed {local}");
                }
                PinholeCmd::Remove { local } => {
                    dp.remove_pinhole(local)?;
                    println!("removed {local}");
                }
                PinholeCmd::Relearn {
                    local,
                    learn_window,
                } => {
                    dp.relearn(local, window(learn_window)?)?;
                    println!("relearning {local}");
                }
                PinholeCmd::Forward {
                    local,
                    via,
                    to,
                    dscp,
                    clock_rate,
                    srtp,
                } => {
                    let spec = ForwardSpec {
                        via,
                        to,
                        dscp: dscp.map(Dscp::new).transpose()?,
                        clock_rate,
                        check_padding: !srtp,
                    };
                    dp.set_forward(local, Some(spec))
                        .with_context(|| format!("forwarding pinhole {local}"))?;
                    println!("forwarding {local} via {via} to {to} in the kernel");
                }
                PinholeCmd::Unforward { local } => {
                    dp.set_forward(local, None)?;
                    println!("{local}: media goes to the bridge");
                }
            }
        }
        EbpfCmd::Unload { iface } => {
            let r = rtpedge_dataplane::unload(&root, &iface)?;
            let what: Vec<String> = r.detached.iter().map(|a| a.program.to_string()).collect();
            println!(
                "detached from {iface}: {}{}",
                what.join(", "),
                if r.maps_removed {
                    "; maps unpinned"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

fn pinhole_json(
    p: &PinholeInfo,
    forward: Option<ForwardSpec>,
    rtp: Option<rtpedge_dataplane::StreamStats>,
) -> Value {
    json!({
        "local": p.local.to_string(),
        "remote": p.remote_display(),
        "learned": p.learned.map(|l| l.to_string()),
        "policy": p.policy.name(),
        "state": p.state.name(),
        "dscp": p.dscp.map(|d| d.value()),
        "rate": p.rate.map(|r| r.to_string()),
        "packets": p.counters.packets,
        "bytes": p.counters.bytes,
        "dropped_closed": p.counters.dropped_closed,
        "dropped_wrong_source": p.counters.dropped_wrong_source,
        "dropped_rate_limited": p.counters.dropped_rate_limited,
        "tx_packets": p.counters.tx_packets,
        "tx_bytes": p.counters.tx_bytes,
        "forwarded_packets": p.counters.forwarded_packets,
        "forwarded_bytes": p.counters.forwarded_bytes,
        "idle_ms": p.counters.idle.map(|d| d.as_millis() as u64),
        "forward": forward.map(|f| json!({
            "via": f.via.to_string(),
            "to": f.to.to_string(),
            "dscp": f.dscp.map(|d| d.value()),
            "clock_rate": f.clock_rate,
        })),
        "forwarded_rtp": rtp.map(|s| json!({
            "ssrc": s.ssrc(),
            "expected": s.expected(),
            "received": s.received(),
            "lost": s.lost(),
            "reordered": s.reordered(),
            "duplicates": s.duplicates(),
            "jitter_us": s.jitter().as_micros() as u64,
        })),
    })
}
