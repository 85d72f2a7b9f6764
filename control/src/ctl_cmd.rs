//! `rtpedge ctl ...`: an ng client on the command line for operators (and the demo): ping,
//! list, query, delete, offer and answer against a running daemon (or any rtpengine). Replies
//! are printed as JSON; an `error` reply exits non-zero with its reason.

use std::{io::Read as _, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use rtpedge::ng::{NgClient, Value, json};

#[derive(Args)]
pub struct CtlArgs {
    /// The daemon's ng socket.
    #[arg(long, global = true, default_value = "127.0.0.1:2223")]
    ng: SocketAddr,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Args)]
struct SdpArgs {
    /// SIP Call-ID.
    #[arg(long)]
    call_id: String,
    /// Tag of the offering side.
    #[arg(long)]
    from_tag: String,
    /// SDP file (`-` for standard input).
    #[arg(long)]
    sdp: PathBuf,
    /// ng flags (repeatable), e.g. --flag trust-address.
    #[arg(long = "flag")]
    flags: Vec<String>,
    /// SIP source address (`received-from`).
    #[arg(long)]
    received_from: Option<std::net::IpAddr>,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// ping → pong.
    Ping,
    /// Call-ids of the calls the daemon knows.
    List,
    /// Statistics of a call.
    Query {
        /// SIP Call-ID.
        call_id: String,
    },
    /// End a call (BYE).
    Delete {
        /// SIP Call-ID.
        call_id: String,
    },
    /// Send an offer; prints the reply (its `sdp` is the rewritten SDP).
    Offer(SdpArgs),
    /// Send an answer.
    Answer {
        #[command(flatten)]
        sdp: SdpArgs,
        /// Tag of the answering side.
        #[arg(long)]
        to_tag: String,
    },
}

fn read_sdp(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::stdin()
            .read_to_end(&mut v)
            .context("reading SDP from stdin")?;
        return Ok(v);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn extra(a: &SdpArgs) -> Vec<(&'static str, Value)> {
    let mut v = Vec::new();
    if !a.flags.is_empty() {
        v.push(("flags", Value::list(a.flags.iter().map(String::as_str))));
    }
    if let Some(ip) = a.received_from {
        let fam = if ip.is_ipv4() { "IP4" } else { "IP6" };
        v.push((
            "received-from",
            Value::list([fam.to_string(), ip.to_string()]),
        ));
    }
    v
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let ng = NgClient::new(args.ng)
        .with_context(|| format!("ng socket for {}", args.ng))?
        .with_timeout(Duration::from_secs(1));
    let dict = |pairs: Vec<(&str, Value)>| Value::dict(pairs);
    let request = match &args.cmd {
        CtlCmd::Ping => dict(vec![("command", "ping".into())]),
        CtlCmd::List => dict(vec![("command", "list".into())]),
        CtlCmd::Query { call_id } => dict(vec![
            ("command", "query".into()),
            ("call-id", call_id.as_str().into()),
        ]),
        CtlCmd::Delete { call_id } => dict(vec![
            ("command", "delete".into()),
            ("call-id", call_id.as_str().into()),
        ]),
        CtlCmd::Offer(a) => {
            let mut d = vec![
                ("command", "offer".into()),
                ("call-id", a.call_id.as_str().into()),
                ("from-tag", a.from_tag.as_str().into()),
                ("sdp", Value::from(read_sdp(&a.sdp)?)),
            ];
            d.extend(extra(a));
            dict(d)
        }
        CtlCmd::Answer { sdp: a, to_tag } => {
            let mut d = vec![
                ("command", "answer".into()),
                ("call-id", a.call_id.as_str().into()),
                ("from-tag", a.from_tag.as_str().into()),
                ("to-tag", to_tag.as_str().into()),
                ("sdp", Value::from(read_sdp(&a.sdp)?)),
            ];
            d.extend(extra(a));
            dict(d)
        }
    };
    let reply = ng
        .request(request)
        .with_context(|| format!("no reply from {}", args.ng))?;
    let mut out = Vec::new();
    json::to_json(&reply, &mut out);
    println!("{}", String::from_utf8_lossy(&out));
    if reply.get_str("result") == Some("error") {
        bail!("{}", reply.get_str("error-reason").unwrap_or("error"));
    }
    Ok(())
}
