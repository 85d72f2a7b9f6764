//! Rebuild the BPF object when bpf-linker changes (a new nightly needs a relinked bpf-linker).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
