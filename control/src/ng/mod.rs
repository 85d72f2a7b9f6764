//! ng protocol (being written).
