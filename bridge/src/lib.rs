//! rtpedge's userspace RTP bridge. Built in its own issue (#3); this crate reserves its place in
//! the workspace so the daemon and benches can depend on it from the start.
