//! `rtpedge`: the media edge daemon and its operator commands.
//!
//! `rtpedge [FLAGS]` runs the daemon (embedded defaults: ng on 127.0.0.1:2223, media on
//! 127.0.0.1, ports 30000-40000, CDRs in ./rtpedge-data/cdr.sqlite). `rtpedge ebpf ...` is the
//! data-plane operator interface (wrapped by scripts/ebpf).

mod ctl_cmd;
mod ebpf_cmd;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use rtpedge::daemon::config::{self, FileBilling, FileConfig, FileDscp, FileTimeouts};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rtpedge",
    version,
    about = "rtpedge: Linux edge data plane for real-time media",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    daemon: DaemonArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load, inspect and unload the XDP/TC data plane and manage pinholes by hand.
    Ebpf(ebpf_cmd::EbpfArgs),
    /// Talk to a running daemon over ng: ping, list, query, delete, offer, answer.
    Ctl(ctl_cmd::CtlArgs),
}

/// Daemon flags; each also reads an environment variable, and overrides the config file.
/// Every id is prefixed `daemon_`: subcommands' global options (`ebpf --pin-root`, `ctl --ng`)
/// are propagated into these matches under their own ids, and clap panics when two arguments
/// share an id with different types.
#[derive(Args)]
struct DaemonArgs {
    /// TOML configuration file.
    #[arg(
        long = "config",
        id = "daemon_config",
        value_name = "FILE",
        env = "RTPEDGE_CONFIG"
    )]
    config: Option<PathBuf>,
    /// ng control socket (default 127.0.0.1:2223).
    #[arg(
        long = "ng",
        id = "daemon_ng",
        value_name = "ADDR:PORT",
        env = "RTPEDGE_NG"
    )]
    ng: Option<String>,
    /// HTTP API (default 127.0.0.1:8080; `off` disables it).
    #[arg(
        long = "http",
        id = "daemon_http",
        value_name = "ADDR:PORT",
        env = "RTPEDGE_HTTP"
    )]
    http: Option<String>,
    /// Event channel, WebSocket subprotocol rtpedge.v1 (default 127.0.0.1:8081; `off`).
    #[arg(
        long = "ws",
        id = "daemon_ws",
        value_name = "ADDR:PORT",
        env = "RTPEDGE_WS"
    )]
    ws: Option<String>,
    /// Credit from the `embedded` ledger (default) or an `external` billing system.
    #[arg(
        long = "billing",
        id = "daemon_billing",
        value_name = "BACKEND",
        env = "RTPEDGE_BILLING"
    )]
    billing: Option<String>,
    /// Address legs bind and SDP advertises (default 127.0.0.1).
    #[arg(
        long = "media-address",
        id = "daemon_media_address",
        value_name = "IP",
        env = "RTPEDGE_MEDIA_ADDRESS"
    )]
    media_address: Option<String>,
    /// Address written into SDP instead of --media-address (host behind 1:1 NAT).
    #[arg(
        long = "advertised-address",
        id = "daemon_advertised_address",
        value_name = "IP",
        env = "RTPEDGE_ADVERTISED_ADDRESS"
    )]
    advertised_address: Option<String>,
    /// Media port range LO-HI (default 30000-40000).
    #[arg(
        long = "ports",
        id = "daemon_ports",
        value_name = "LO-HI",
        env = "RTPEDGE_PORTS"
    )]
    ports: Option<String>,
    /// Attach (or re-open) the XDP data plane on this interface.
    #[arg(
        long = "interface",
        id = "daemon_interface",
        value_name = "IF",
        env = "RTPEDGE_INTERFACE"
    )]
    interface: Option<String>,
    /// Run without the XDP data plane (hosts that cannot load eBPF).
    #[arg(long = "no-xdp", id = "daemon_no_xdp", env = "RTPEDGE_NO_XDP")]
    no_xdp: bool,
    /// Forward answered calls' RTP in the kernel (XDP) once media flows both ways; needs the
    /// XDP data plane.
    #[arg(long = "fast-path", id = "daemon_fast_path", env = "RTPEDGE_FAST_PATH")]
    fast_path: bool,
    /// XDP mode: auto, native or generic.
    #[arg(
        long = "xdp-mode",
        id = "daemon_xdp_mode",
        value_name = "MODE",
        env = "RTPEDGE_XDP_MODE"
    )]
    xdp_mode: Option<String>,
    /// bpffs pin root of the data plane.
    // Its own id: `ebpf`'s global `--pin-root` (a PathBuf) is propagated up to these matches
    // under the id `pin_root`, and reading it here as a String panicked in every `rtpedge ebpf`.
    #[arg(
        long = "pin-root",
        id = "daemon_pin_root",
        value_name = "PIN_ROOT",
        env = "RTPEDGE_PIN_ROOT"
    )]
    pin_root: Option<String>,
    /// CDR database: a SQLite path or a postgres:// URL (default rtpedge-data/cdr.sqlite).
    #[arg(
        long = "cdr-db",
        id = "daemon_cdr_db",
        value_name = "PATH|URL",
        env = "RTPEDGE_CDR_DB"
    )]
    cdr_db: Option<String>,
    /// Bridge worker threads (0: one per core).
    #[arg(
        long = "workers",
        id = "daemon_workers",
        value_name = "N",
        env = "RTPEDGE_WORKERS"
    )]
    workers: Option<usize>,
    /// Media port pairs kept bound ahead of calls, per media address; released pairs are
    /// reused after the quarantine instead of closed (0: none of this, bind on demand).
    #[arg(
        long = "port-reserve",
        id = "daemon_port_reserve",
        value_name = "N",
        env = "RTPEDGE_PORT_RESERVE"
    )]
    port_reserve: Option<usize>,
    /// Refuse new calls beyond this many (`load limit`).
    #[arg(
        long = "max-calls",
        id = "daemon_max_calls",
        value_name = "N",
        env = "RTPEDGE_MAX_CALLS"
    )]
    max_calls: Option<usize>,
    /// Media timeout in seconds.
    #[arg(
        long = "media-timeout",
        id = "daemon_media_timeout",
        value_name = "SECS",
        env = "RTPEDGE_MEDIA_TIMEOUT"
    )]
    media_timeout: Option<u64>,
    /// Offer timeout in seconds.
    #[arg(
        long = "offer-timeout",
        id = "daemon_offer_timeout",
        value_name = "SECS",
        env = "RTPEDGE_OFFER_TIMEOUT"
    )]
    offer_timeout: Option<u64>,
    /// Maximum call duration in seconds (0: none).
    #[arg(
        long = "final-timeout",
        id = "daemon_final_timeout",
        value_name = "SECS",
        env = "RTPEDGE_FINAL_TIMEOUT"
    )]
    final_timeout: Option<u64>,
    /// Billing account of calls whose offer names none (ng `account`).
    #[arg(
        long = "default-account",
        id = "daemon_default_account",
        value_name = "ID",
        env = "RTPEDGE_DEFAULT_ACCOUNT"
    )]
    default_account: Option<String>,
    /// Seconds an ended call is kept before its ports are released.
    #[arg(
        long = "delete-delay",
        id = "daemon_delete_delay",
        value_name = "SECS",
        env = "RTPEDGE_DELETE_DELAY"
    )]
    delete_delay: Option<u64>,
    /// Seconds a released media port rests before it is handed out again (late packets of an
    /// old call must not reach a new one; a closed pinhole already drops them at XDP).
    #[arg(
        long = "port-quarantine",
        id = "daemon_port_quarantine",
        value_name = "SECS",
        env = "RTPEDGE_PORT_QUARANTINE"
    )]
    port_quarantine: Option<u64>,
}

impl DaemonArgs {
    fn overrides(&self) -> FileConfig {
        FileConfig {
            ng: self.ng.clone(),
            http: self.http.clone(),
            ws: self.ws.clone(),
            media_address: self.media_address.clone(),
            advertised_address: self.advertised_address.clone(),
            ports: self.ports.clone(),
            interface: self.interface.clone(),
            no_xdp: self.no_xdp.then_some(true),
            fast_path: self.fast_path.then_some(true),
            xdp_mode: self.xdp_mode.clone(),
            pin_root: self.pin_root.clone(),
            cdr_db: self.cdr_db.clone(),
            workers: self.workers,
            port_reserve: self.port_reserve,
            max_calls: self.max_calls,
            timeouts: FileTimeouts {
                media: self.media_timeout,
                offer: self.offer_timeout,
                final_: self.final_timeout,
                delete_delay: self.delete_delay,
                port_quarantine: self.port_quarantine,
                ..FileTimeouts::default()
            },
            dscp: FileDscp::default(),
            billing: FileBilling {
                default_account: self.default_account.clone(),
                backend: self.billing.clone(),
                ..FileBilling::default()
            },
            ..FileConfig::default()
        }
    }
}

fn main() {
    // Before any thread exists: under `ip netns exec`, rejoin the invoking mount namespace so
    // pins are shared with the host and outlive this process (see rtpedge_dataplane::pin).
    let escaped = rtpedge_dataplane::escape_ip_netns_exec_mount_namespace();
    let cli = Cli::parse();
    let default_level = if cli.command.is_some() {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    match &escaped {
        Ok(true) => tracing::info!("joined the invoking mount namespace (ip netns exec detected)"),
        Ok(false) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    let result = match cli.command {
        Some(Command::Ebpf(args)) => ebpf_cmd::run(args),
        Some(Command::Ctl(args)) => ctl_cmd::run(args),
        None => run_daemon(&cli.daemon),
    };
    if let Err(e) = result {
        eprintln!("rtpedge: error: {e:#}");
        std::process::exit(1);
    }
}

fn run_daemon(args: &DaemonArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => config::read_file(p)?,
        None => FileConfig::default(),
    };
    let cfg = config::resolve(file, args.overrides())?;
    rtpedge::daemon::run(cfg).context("daemon")
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Command};

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Both forms parse, including options whose names exist in both (`--pin-root`): a clash
    /// of argument ids once made every `rtpedge ebpf` call panic.
    #[test]
    fn daemon_and_ebpf_forms_parse() {
        let cli =
            Cli::try_parse_from(["rtpedge", "--pin-root", "/a", "--ports", "1000-2000"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.daemon.pin_root.as_deref(), Some("/a"));
        let cli = Cli::try_parse_from(["rtpedge", "ebpf", "--pin-root", "/b", "status", "--json"])
            .unwrap();
        assert!(matches!(cli.command, Some(Command::Ebpf(_))));
        assert!(Cli::try_parse_from(["rtpedge", "--ports", "1-2", "ebpf", "status"]).is_err());
        let cli = Cli::try_parse_from(["rtpedge", "ctl", "--ng", "127.0.0.1:9", "ping"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Ctl(_))));
        let cli = Cli::try_parse_from(["rtpedge", "--ng", "127.0.0.1:9", "--no-xdp"]).unwrap();
        assert_eq!(cli.daemon.ng.as_deref(), Some("127.0.0.1:9"));
        assert!(cli.daemon.no_xdp);
    }
}
