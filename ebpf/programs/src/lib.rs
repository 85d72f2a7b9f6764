//! Host-side stub: the programs live in `main.rs` and are built for `bpfel-unknown-none` by the
//! loader's build script. This library target only exists so that the loader can declare a
//! build-dependency on this crate and be rebuilt when the programs change.
#![no_std]
