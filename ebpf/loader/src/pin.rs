//! Where the data plane's maps and links are pinned, and making sure that place is a bpffs that
//! outlives the process.
//!
//! Layout under the pin root (default `/sys/fs/bpf/rtpedge`):
//! `v<SCHEMA>/maps/<MAP>` for every map, `v<SCHEMA>/links/<iface>/{xdp-native|xdp-generic|tc-egress}`
//! for every attachment. A pinned link keeps its program attached after the loader exits; the
//! versioned directory keeps a build from ever opening maps of another layout.
//!
//! `ip netns exec` runs commands in a fresh mount namespace with a fresh /sys, so pins made
//! there would vanish with the process. [`escape_ip_netns_exec_mount_namespace`] moves the
//! process back to the mount namespace it was invoked from (keeping its network namespace), so
//! the same pins are seen from inside and outside the network namespace.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use rtpedge_common::SCHEMA_VERSION;

use crate::DataplaneError;

/// Default pin root.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/rtpedge";
const BPF_FS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// File names of link pins.
pub(crate) const LINK_XDP_NATIVE: &str = "xdp-native";
pub(crate) const LINK_XDP_GENERIC: &str = "xdp-generic";
pub(crate) const LINK_TC_EGRESS: &str = "tc-egress";

/// The pin directories of one pin root.
#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The pin root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/v<SCHEMA>`.
    pub fn version_dir(&self) -> PathBuf {
        self.root.join(format!("v{SCHEMA_VERSION}"))
    }

    /// Where the maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.version_dir().join("maps")
    }

    /// Where the links are pinned, one directory per interface.
    pub fn links_dir(&self) -> PathBuf {
        self.version_dir().join("links")
    }

    /// Where the links of `iface` are pinned.
    pub fn iface_links(&self, iface: &str) -> Result<PathBuf, DataplaneError> {
        validate_iface_name(iface)?;
        Ok(self.links_dir().join(iface))
    }

    /// Version directories of other schemas under the root, with their schema numbers.
    pub fn other_schemas(&self) -> Vec<(PathBuf, u32)> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let n: u32 = name.to_str()?.strip_prefix('v')?.parse().ok()?;
                (n != SCHEMA_VERSION).then(|| (e.path(), n))
            })
            .collect()
    }
}

/// Interface names are at most 15 bytes and never contain '/' or whitespace.
pub(crate) fn validate_iface_name(iface: &str) -> Result<(), DataplaneError> {
    let ok = !iface.is_empty()
        && iface.len() <= 15
        && iface != "."
        && iface != ".."
        && !iface.contains(['/', '\0', ' ', '\t', '\n', ':']);
    if ok {
        Ok(())
    } else {
        Err(DataplaneError::Invalid(format!(
            "interface name {iface:?}: not a valid Linux interface name"
        )))
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 as u64 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Makes sure `root` lies on a bpffs, mounting one if needed (on /sys/fs/bpf for roots below
/// it, on the root itself otherwise), and creates the directory.
pub fn ensure_bpffs(root: &Path) -> Result<(), DataplaneError> {
    let err = |reason: String| DataplaneError::PinRoot {
        path: root.to_path_buf(),
        reason,
    };
    // Two first loads at once must not both mount: stacked bpffs mounts hide each other's pins.
    let _lock = MountLock::acquire();
    let mut probe = root.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe) {
        let target = if root.starts_with(BPF_FS) {
            PathBuf::from(BPF_FS)
        } else {
            root.to_path_buf()
        };
        fs::create_dir_all(&target)
            .map_err(|e| err(format!("creating {}: {e}", target.display())))?;
        nix::mount::mount(
            Some("bpf"),
            &target,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            err(format!(
                "not on a bpffs, and mounting one on {} failed: {e} (mount it by hand: \
                 `mount -t bpf bpf {}`)",
                target.display(),
                target.display()
            ))
        })?;
        tracing::info!(target = %target.display(), "mounted bpffs");
    }
    fs::create_dir_all(root).map_err(|e| err(format!("creating it: {e}")))
}

/// An exclusive advisory lock held while checking and mounting bpffs (released on drop).
struct MountLock {
    /// Held, never read: the lock lives as long as the open file.
    _file: Option<fs::File>,
}

impl MountLock {
    fn acquire() -> Self {
        use std::os::fd::AsRawFd as _;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/rtpedge-bpffs.lock")
            .ok();
        if let Some(f) = &file {
            // SAFETY: flock on a file descriptor we own; blocking until the other loader is done.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        }
        MountLock { _file: file }
    }
}

/// Inode of a process's mount namespace (`/proc/<pid>/ns/mnt`).
fn mnt_ns_inode(pid: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// Parent pid of `pid`, from `/proc/<pid>/stat` (the field after the parenthesised name).
fn parent_of(pid: &str) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// If this process runs in a private mount namespace without a bpffs on /sys/fs/bpf (as under
/// `ip netns exec`, which mounts a fresh /sys; or `unshare -m` after an unmount), joins the mount
/// namespace of the nearest ancestor process that is outside it (the shell that ran the
/// command), so that pins are shared with that namespace and survive the process. A private
/// mount namespace that has its own bpffs is left alone. The network namespace is kept. Must be called while the process is
/// single-threaded (first thing in `main`). Returns whether it switched.
pub fn escape_ip_netns_exec_mount_namespace() -> Result<bool, DataplaneError> {
    if is_bpffs(Path::new(BPF_FS)) {
        return Ok(false);
    }
    let Some(mine) = mnt_ns_inode("self") else {
        return Ok(false);
    };
    let mut pid = std::process::id();
    let outside = loop {
        match parent_of(&pid.to_string()) {
            Some(ppid) if ppid > 0 => pid = ppid,
            _ => return Ok(false),
        }
        match mnt_ns_inode(&pid.to_string()) {
            Some(ino) if ino != mine => break pid,
            Some(_) => continue,
            None => return Ok(false),
        }
    };
    let err = |reason: String| DataplaneError::PinRoot {
        path: BPF_FS.into(),
        reason,
    };
    let f = fs::File::open(format!("/proc/{outside}/ns/mnt")).map_err(|e| {
        err(format!(
            "private mount namespace without bpffs, and /proc/{outside}/ns/mnt: {e}"
        ))
    })?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
        err(format!(
            "private mount namespace (ip netns exec?) without bpffs, and joining the invoking \
             process's mount namespace failed: {e}; use --netns NAME instead of ip netns exec"
        ))
    })?;
    Ok(true)
}

/// Moves the calling thread into the network namespace `/run/netns/<name>` (as `ip netns`
/// names them). Mount namespace and pins are unaffected.
pub fn enter_netns(name: &str) -> Result<(), DataplaneError> {
    if name.is_empty() || name.contains('/') {
        return Err(DataplaneError::Invalid(format!("netns name {name:?}")));
    }
    let path = Path::new("/run/netns").join(name);
    let f = fs::File::open(&path)
        .map_err(|e| DataplaneError::Invalid(format!("network namespace {name}: {e}")))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| DataplaneError::PermissionDenied(format!("entering netns {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_versioned() {
        let l = PinLayout::new("/sys/fs/bpf/x");
        assert_eq!(
            l.maps_dir(),
            PathBuf::from(format!("/sys/fs/bpf/x/v{SCHEMA_VERSION}/maps"))
        );
        assert_eq!(
            l.iface_links("eth0.100").unwrap(),
            PathBuf::from(format!("/sys/fs/bpf/x/v{SCHEMA_VERSION}/links/eth0.100"))
        );
        for bad in ["", "..", "a/b", "0123456789abcdef", "a b"] {
            assert!(l.iface_links(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn other_schemas_are_found() {
        let dir = std::env::temp_dir().join(format!("rtpedge-pin-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(format!("v{SCHEMA_VERSION}"))).unwrap();
        fs::create_dir_all(dir.join("v999")).unwrap();
        fs::create_dir_all(dir.join("notaversion")).unwrap();
        let l = PinLayout::new(&dir);
        assert_eq!(l.other_schemas(), vec![(dir.join("v999"), 999)]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
