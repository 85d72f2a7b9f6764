//! The ng protocol module, compiled on its own for fuzzing (see Cargo.toml).

#[path = "../../src/ng/mod.rs"]
pub mod ng;
