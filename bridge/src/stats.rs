//! Receive statistics of one RTP stream (RFC 3550): the implementation lives in
//! `rtpedge-common` so that the XDP fast path counts forwarded media by the same rules as the
//! bridge (see [`rtpedge_common::rtp_stats`]).

pub use rtpedge_common::rtp_stats::StreamStats;
