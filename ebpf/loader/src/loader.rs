//! Load, attach, pin, re-open, detach and unpin the data plane.
//!
//! `load` is idempotent: maps already pinned (of this schema, with the right layout) are reused
//! with their pinholes and counters, and an interface that already has our pinned XDP link is
//! left attached as it is. That is what lets a daemon restart without a gap in forwarding.

use std::{ffi::CString, fs, path::PathBuf};

use aya::{
    EbpfLoader,
    maps::Map,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use rtpedge_common::{map_names, program_names};

use crate::{
    AttachMode, Dataplane as _, DataplaneError, GlobalCounters, KernelDataplane,
    error::error_chain,
    pin::{
        LINK_TC_EGRESS, LINK_XDP_GENERIC, LINK_XDP_NATIVE, PinLayout, ensure_bpffs,
        validate_iface_name,
    },
};

/// What to load and where.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Interface to attach to.
    pub iface: String,
    /// Media port range; `None` keeps the current one (or the default on first load).
    pub ports: Option<(u16, u16)>,
    /// XDP attach mode.
    pub mode: AttachMode,
    /// Pin root (default [`crate::DEFAULT_PIN_ROOT`]).
    pub pin_root: PathBuf,
    /// Also attach the TC egress DSCP marker.
    pub egress: bool,
}

impl LoadOptions {
    /// Defaults for `iface`: auto mode, default pin root, egress marking on.
    pub fn new(iface: impl Into<String>) -> Self {
        Self {
            iface: iface.into(),
            ports: None,
            mode: AttachMode::Auto,
            pin_root: crate::DEFAULT_PIN_ROOT.into(),
            egress: true,
        }
    }
}

/// An attached program, as found in the pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// `xdp` or `tc_egress`.
    pub program: &'static str,
    /// `native`, `generic` or `tcx`.
    pub mode: &'static str,
}

/// The outcome of [`load`].
pub struct LoadReport {
    /// What is attached to the interface now.
    pub attachments: Vec<Attachment>,
    /// Maps were already pinned and were reused (with their pinholes).
    pub reused_maps: bool,
    /// The interface already had our programs; nothing was re-attached.
    pub already_attached: bool,
    /// A handle on the (pinned) maps.
    pub dataplane: KernelDataplane,
}

/// The outcome of [`unload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnloadReport {
    /// Links that were unpinned (and so detached).
    pub detached: Vec<Attachment>,
    /// No interface is left, so the maps were unpinned too.
    pub maps_removed: bool,
}

/// What [`status`] reports.
#[derive(Clone, Debug)]
pub struct Status {
    /// Pin root.
    pub pin_root: PathBuf,
    /// Media port range.
    pub port_range: (u16, u16),
    /// Attached programs.
    pub attachments: Vec<Attachment>,
    /// Number of pinholes.
    pub pinholes: usize,
    /// Global counters.
    pub counters: GlobalCounters,
}

fn ifindex(iface: &str) -> Result<u32, DataplaneError> {
    validate_iface_name(iface)?;
    let c =
        CString::new(iface).map_err(|_| DataplaneError::Invalid(format!("interface {iface:?}")))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DataplaneError::NoSuchInterface(iface.to_string()));
    }
    Ok(idx)
}

fn attachment_of(iface: &str, file: &str) -> Option<Attachment> {
    let (program, mode) = match file {
        LINK_XDP_NATIVE => ("xdp", "native"),
        LINK_XDP_GENERIC => ("xdp", "generic"),
        LINK_TC_EGRESS => ("tc_egress", "tcx"),
        _ => return None,
    };
    Some(Attachment {
        iface: iface.to_string(),
        program,
        mode,
    })
}

fn attachments(layout: &PinLayout) -> Vec<Attachment> {
    let mut out = Vec::new();
    let Ok(ifaces) = fs::read_dir(layout.links_dir()) else {
        return out;
    };
    for i in ifaces.flatten() {
        let iface = i.file_name().to_string_lossy().into_owned();
        let Ok(files) = fs::read_dir(i.path()) else {
            continue;
        };
        for f in files.flatten() {
            if let Some(a) = attachment_of(&iface, &f.file_name().to_string_lossy()) {
                out.push(a);
            }
        }
    }
    out.sort_by(|a, b| (&a.iface, a.program).cmp(&(&b.iface, b.program)));
    out
}

fn check_schemas(layout: &PinLayout) -> Result<(), DataplaneError> {
    if let Some((path, found)) = layout.other_schemas().into_iter().next() {
        return Err(DataplaneError::SchemaMismatch {
            path,
            found,
            expected: rtpedge_common::SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn attach_error(iface: &str, mode: &'static str, e: aya::programs::ProgramError) -> DataplaneError {
    let msg = error_chain(&e);
    if let aya::programs::ProgramError::UnknownInterface { .. } = e {
        return DataplaneError::NoSuchInterface(iface.to_string());
    }
    if msg.contains("Device or resource busy") || msg.contains("File exists") {
        return DataplaneError::InterfaceBusy {
            iface: iface.to_string(),
        };
    }
    if msg.contains("Operation not permitted") {
        return DataplaneError::PermissionDenied(format!("attaching XDP to {iface}: {msg}"));
    }
    DataplaneError::XdpUnsupported {
        iface: iface.to_string(),
        mode,
        reason: msg,
    }
}

/// Loads the programs (or reuses the pinned maps), attaches them to `opts.iface` and pins
/// everything. Safe to call again: an interface that is already attached stays as it is.
pub fn load(opts: &LoadOptions) -> Result<LoadReport, DataplaneError> {
    let layout = PinLayout::new(&opts.pin_root);
    let link_dir = layout.iface_links(&opts.iface)?;
    ifindex(&opts.iface)?;
    ensure_bpffs(layout.root())?;
    check_schemas(&layout)?;
    let maps_dir = layout.maps_dir();
    let reused_maps = maps_dir.join(map_names::META).exists();
    if reused_maps {
        // Validates schema stamp and every map's layout before aya reuses them blindly.
        let mut dp = KernelDataplane::open_pinned(&maps_dir)?;
        let attached: Vec<Attachment> = attachments(&layout)
            .into_iter()
            .filter(|a| a.iface == opts.iface)
            .collect();
        if attached.iter().any(|a| a.program == "xdp") {
            if let Some((lo, hi)) = opts.ports {
                dp.set_port_range(lo, hi)?;
            }
            return Ok(LoadReport {
                attachments: attached,
                reused_maps,
                already_attached: true,
                dataplane: dp,
            });
        }
    }
    fs::create_dir_all(&maps_dir)
        .and_then(|_| fs::create_dir_all(&link_dir))
        .map_err(|e| DataplaneError::PinRoot {
            path: layout.root().to_path_buf(),
            reason: format!("creating pin directories: {e}"),
        })?;
    let result = attach_fresh(opts, &layout, reused_maps);
    if result.is_err() {
        let _ = fs::remove_dir(&link_dir);
        if !reused_maps && attachments(&layout).is_empty() {
            let _ = fs::remove_dir_all(layout.version_dir());
        }
    }
    result
}

fn attach_fresh(
    opts: &LoadOptions,
    layout: &PinLayout,
    reused_maps: bool,
) -> Result<LoadReport, DataplaneError> {
    let maps_dir = layout.maps_dir();
    let link_dir = layout.iface_links(&opts.iface)?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = map_names::ALL
        .iter()
        .map(|n| (*n, maps_dir.join(n)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut bpf = loader
        .load(crate::BPF_OBJECT)
        .map_err(|e| DataplaneError::bpf("loading the BPF object", e))?;

    // XDP ingress.
    let xdp: &mut Xdp = bpf
        .program_mut(program_names::XDP_EDGE)
        .ok_or_else(|| DataplaneError::Invalid("BPF object lacks xdp_edge".into()))?
        .try_into()
        .map_err(|e| DataplaneError::bpf("xdp_edge", e))?;
    xdp.load()
        .map_err(|e| DataplaneError::bpf("verifying xdp_edge", e))?;
    let (xdp_link_id, xdp_mode) = match opts.mode {
        AttachMode::Native => (
            xdp.attach(&opts.iface, XdpMode::Driver)
                .map_err(|e| attach_error(&opts.iface, "native", e))?,
            "native",
        ),
        AttachMode::Generic => (
            xdp.attach(&opts.iface, XdpMode::Skb)
                .map_err(|e| attach_error(&opts.iface, "generic", e))?,
            "generic",
        ),
        AttachMode::Auto => match xdp.attach(&opts.iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(native_err) => {
                let native_err = attach_error(&opts.iface, "native", native_err);
                if !matches!(native_err, DataplaneError::XdpUnsupported { .. }) {
                    return Err(native_err);
                }
                tracing::warn!(iface = %opts.iface, error = %native_err, "native XDP unavailable, using generic mode");
                (
                    xdp.attach(&opts.iface, XdpMode::Skb)
                        .map_err(|e| attach_error(&opts.iface, "generic", e))?,
                    "generic",
                )
            }
        },
    };
    let xdp_link = xdp
        .take_link(xdp_link_id)
        .map_err(|e| DataplaneError::bpf("taking the XDP link", e))?;
    let xdp_fd_link = FdLink::try_from(xdp_link).map_err(|e| {
        DataplaneError::bpf(
            "the kernel attached XDP without a BPF link, which cannot be pinned (kernel >= 5.9 needed)",
            e,
        )
    })?;

    // TC egress (DSCP marking of what the host sends).
    let mut tc_fd_link = None;
    if opts.egress {
        let tc: &mut SchedClassifier = bpf
            .program_mut(program_names::TC_EGRESS)
            .ok_or_else(|| DataplaneError::Invalid("BPF object lacks tc_egress".into()))?
            .try_into()
            .map_err(|e| DataplaneError::bpf("tc_egress", e))?;
        tc.load()
            .map_err(|e| DataplaneError::bpf("verifying tc_egress", e))?;
        let id = tc.attach(&opts.iface, TcAttachType::Egress).map_err(|e| {
            DataplaneError::bpf(format!("attaching tc_egress to {}", opts.iface), e)
        })?;
        let link = tc
            .take_link(id)
            .map_err(|e| DataplaneError::bpf("taking the TC link", e))?;
        tc_fd_link = Some(FdLink::try_from(link).map_err(|e| {
            DataplaneError::bpf("TC egress needs TCX links (kernel >= 6.6) to be pinned", e)
        })?);
    }

    // Maps: stamp fresh ones, apply the port range.
    let mut take = |name: &str| -> Result<Map, DataplaneError> {
        bpf.take_map(name)
            .ok_or_else(|| DataplaneError::Invalid(format!("BPF object lacks map {name}")))
    };
    let mut dp = KernelDataplane::from_maps(&mut take)?;
    if !dp.is_stamped()? {
        dp.stamp_schema()?;
        let (lo, hi) = opts.ports.unwrap_or((
            rtpedge_common::DEFAULT_PORT_MIN,
            rtpedge_common::DEFAULT_PORT_MAX,
        ));
        dp.set_port_range(lo, hi)?;
    } else if let Some((lo, hi)) = opts.ports {
        dp.set_port_range(lo, hi)?;
    }

    // Pin the links last: only a fully attached interface is left behind.
    let xdp_file = if xdp_mode == "native" {
        LINK_XDP_NATIVE
    } else {
        LINK_XDP_GENERIC
    };
    let mut attached = Vec::new();
    xdp_fd_link
        .pin(link_dir.join(xdp_file))
        .map_err(|e| DataplaneError::bpf("pinning the XDP link", e))?;
    attached.extend(attachment_of(&opts.iface, xdp_file));
    if let Some(l) = tc_fd_link {
        l.pin(link_dir.join(LINK_TC_EGRESS))
            .map_err(|e| DataplaneError::bpf("pinning the TC link", e))?;
        attached.extend(attachment_of(&opts.iface, LINK_TC_EGRESS));
    }
    Ok(LoadReport {
        attachments: attached,
        reused_maps,
        already_attached: false,
        dataplane: dp,
    })
}

/// Detaches rtpedge from `iface` (unpins its links). When no interface is left, the maps are
/// unpinned too, which removes every pinhole.
pub fn unload(pin_root: &std::path::Path, iface: &str) -> Result<UnloadReport, DataplaneError> {
    let layout = PinLayout::new(pin_root);
    let dir = layout.iface_links(iface)?;
    let mut detached = Vec::new();
    let entries = fs::read_dir(&dir).map_err(|_| {
        DataplaneError::Invalid(format!(
            "rtpedge is not attached to {iface} (no pinned links under {})",
            dir.display()
        ))
    })?;
    for f in entries.flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        match PinnedLink::from_pin(f.path()) {
            Ok(link) => {
                // Unpinning drops the last reference: the kernel detaches the program.
                link.unpin()
                    .map_err(|e| DataplaneError::bpf(format!("unpinning {name}"), e))?;
            }
            Err(_) => {
                fs::remove_file(f.path())
                    .map_err(|e| DataplaneError::bpf(format!("removing {name}"), e))?;
            }
        }
        detached.extend(attachment_of(iface, &name));
    }
    fs::remove_dir(&dir)
        .map_err(|e| DataplaneError::bpf(format!("removing {}", dir.display()), e))?;
    let maps_removed = attachments(&layout).is_empty();
    if maps_removed {
        fs::remove_dir_all(layout.version_dir()).map_err(|e| {
            DataplaneError::bpf(format!("removing {}", layout.version_dir().display()), e)
        })?;
        let _ = fs::remove_dir(layout.root());
    }
    Ok(UnloadReport {
        detached,
        maps_removed,
    })
}

/// Attachments, port range, pinhole count and counters of the data plane under `pin_root`.
pub fn status(pin_root: &std::path::Path) -> Result<Status, DataplaneError> {
    let layout = PinLayout::new(pin_root);
    check_schemas(&layout)?;
    let dp = KernelDataplane::open_pinned(&layout.maps_dir())?;
    Ok(Status {
        pin_root: pin_root.to_path_buf(),
        port_range: dp.port_range()?,
        attachments: attachments(&layout),
        pinholes: dp.pinhole_count()?,
        counters: dp.counters()?,
    })
}
