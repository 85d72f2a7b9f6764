//! The load generator behind `rtpedge-load`: an ng protocol client that sets up calls on a
//! relay (rtpedge or rtpengine alike), or splices them directly on an in-process bridge, and
//! sends real RTP through them.
//!
//! - [`stamp`]: what each packet carries after its RTP header (step, stream, sequence, send
//!   time), so that the receiver measures one-way latency (same host, same clock), loss and
//!   reordering per stream;
//! - [`account`]: per-stream loss, duplicate and reordering accounting;
//! - [`pace`]: the token bucket on the aggregate rate;
//! - [`search`]: the search for the highest rate with loss below a threshold;
//! - [`cpu`]: CPU time of the relay (process, or in-process worker threads) and of the
//!   generator, from `/proc`, and thread pinning;
//! - [`sdp`]: the SDP offered and answered, and reading the relay's ports back;
//! - [`calls`]: call setup and teardown, over ng or on an in-process bridge;
//! - [`traffic`]: the sender and receiver threads of one measurement step;
//! - [`sink`]: the in-kernel receive sink (`--sink xdp`): an XDP program on the generator's
//!   interface accounts for and drops the relayed packets instead of the receiver thread;
//! - [`run`]: a whole media measurement (setup, a fixed rate or a search, teardown);
//! - [`signaling`]: the ng signaling benchmark (offer, answer, delete per second).
//!
//! The pure parts (stamp, accounting, pacing, search, parsing) are unit tested; the I/O parts
//! are exercised by `tests/load_in_process.rs` and by `benches/relay-compare`.

pub mod account;
pub mod calls;
pub mod cpu;
pub mod pace;
pub mod run;
pub mod sdp;
pub mod search;
pub mod signaling;
pub mod sink;
pub mod stamp;
pub mod traffic;
