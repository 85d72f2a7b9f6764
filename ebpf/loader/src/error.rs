//! The data plane's error type: every failure an operator or the daemon can act on has its own
//! variant with a message that says what to do.

use std::{net::SocketAddr, path::PathBuf};

/// Errors of the data-plane loader and of pinhole operations.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The named interface does not exist (in this network namespace).
    #[error("no such network interface: {0}")]
    NoSuchInterface(String),
    /// The caller lacks the privileges to load programs or open pinned maps.
    #[error(
        "permission denied: {0} (run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    )]
    PermissionDenied(String),
    /// XDP (in the asked mode) cannot be attached to this interface.
    #[error("cannot attach XDP to {iface} in {mode} mode: {reason}")]
    XdpUnsupported {
        /// Interface name.
        iface: String,
        /// The mode that failed.
        mode: &'static str,
        /// What the kernel said.
        reason: String,
    },
    /// Another (non-rtpedge) XDP program already owns the interface.
    #[error(
        "{iface} already has an XDP program that rtpedge did not attach; remove it first \
         (`ip link set dev {iface} xdp off`)"
    )]
    InterfaceBusy {
        /// Interface name.
        iface: String,
    },
    /// Nothing is loaded under the pin root.
    #[error(
        "the data plane is not loaded (no pinned maps under {0}); run `scripts/ebpf load --iface IF` first"
    )]
    NotLoaded(PathBuf),
    /// Pinned objects of another schema exist; they are never reused.
    #[error(
        "pinned rtpedge maps at {path} are of schema v{found}, this build uses v{expected}; \
         they are not reused. Unload them with the build that loaded them, or detach and remove \
         them by hand (`rm -r {path}`; media through those pinholes stops)"
    )]
    SchemaMismatch {
        /// The stale pin directory.
        path: PathBuf,
        /// Schema found there (0 if unreadable).
        found: u32,
        /// Schema of this build.
        expected: u32,
    },
    /// A pinned map exists under our name but its layout is not ours.
    #[error(
        "pinned map {path} does not have the expected layout ({detail}); refusing to reuse it. \
         Remove the pin directory (`scripts/ebpf unload --iface IF`, or `rm -r` it) and load again"
    )]
    MapLayout {
        /// The offending pin.
        path: PathBuf,
        /// What differs.
        detail: String,
    },
    /// The pinhole table is full.
    #[error("pinhole table full ({0} entries)")]
    TableFull(u32),
    /// No pinhole exists for that local address and port.
    #[error("no pinhole for {0}")]
    NoSuchPinhole(SocketAddr),
    /// The request itself is invalid (bad address, port, DSCP, rate, policy combination).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The pin root is not usable (not a bpffs, cannot be mounted or created).
    #[error("pin root {path}: {reason}")]
    PinRoot {
        /// The pin root.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// A BPF operation failed for another reason.
    #[error("{context}: {message}")]
    Bpf {
        /// What was being done.
        context: String,
        /// The underlying error, rendered.
        message: String,
    },
}

impl DataplaneError {
    /// Wraps a lower-level error with context, mapping EPERM/EACCES to [`Self::PermissionDenied`].
    pub(crate) fn bpf(context: impl Into<String>, err: impl std::error::Error) -> Self {
        let context = context.into();
        let message = error_chain(&err);
        if message.contains("Operation not permitted") || message.contains("Permission denied") {
            return Self::PermissionDenied(format!("{context}: {message}"));
        }
        Self::Bpf { context, message }
    }
}

/// Renders an error and its sources on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = e.source();
    }
    s
}
