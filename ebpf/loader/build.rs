//! Compiles the eBPF programs (nightly, bpfel-unknown-none, -Z build-std=core, bpf-linker) and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`. `scripts/setup` installs what
//! this needs; see ../../shared/TOOLCHAIN.md for why it is done this way.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../programs");
    let root = root.canonicalize().context("ebpf/programs not found")?;
    let root = root.to_str().context("non-UTF-8 path to ebpf/programs")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "rtpedge-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
