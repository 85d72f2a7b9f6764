//! `rtpedge`: the media edge daemon and its operator commands.
//!
//! Today it carries the data-plane operator commands (`rtpedge ebpf ...`, wrapped by
//! `scripts/ebpf`); the session daemon joins it in its own issue.

mod ebpf_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rtpedge",
    version,
    about = "rtpedge: Linux edge data plane for real-time media"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load, inspect and unload the XDP/TC data plane and manage pinholes by hand.
    Ebpf(ebpf_cmd::EbpfArgs),
}

fn main() {
    // Before any thread exists: under `ip netns exec`, rejoin the host mount namespace so pins
    // are shared with the host and outlive this process (see rtpedge_dataplane::pin).
    let escaped = rtpedge_dataplane::escape_ip_netns_exec_mount_namespace();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match &escaped {
        Ok(true) => tracing::info!("joined the host mount namespace (ip netns exec detected)"),
        Ok(false) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ebpf(args) => ebpf_cmd::run(args),
    };
    if let Err(e) = result {
        eprintln!("rtpedge: error: {e:#}");
        std::process::exit(1);
    }
}
