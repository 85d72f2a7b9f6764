//! Benchmarks and the load generator. The XDP benchmark is `benches/xdp-bench` (a script:
//! it needs namespaces and root); criterion benchmarks and `rtpedge-load` come with the bridge.
