//! SDP (being written).
