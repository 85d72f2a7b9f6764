//! The in-kernel receive sink (`--sink xdp`): the relayed packets are accounted for and dropped
//! by an XDP program on the generator's own interface (`xdp_sink`, bench only, see
//! `rtpedge_common::sink`) instead of being received through the stack into one socket per
//! stream. The generator's core then only sends, so a measurement reaches the relay's limit
//! instead of the generator's.
//!
//! This module owns loading and attaching that program (native XDP, through a `bpf_link`, so
//! the kernel detaches it when the process ends for any reason: normal exit, error, Ctrl-C,
//! even SIGKILL), preparing its maps before each step (which port belongs to which stream, the
//! step id, zeroed counters) and reading them back into the same shape the socket receiver
//! produces ([`SinkReading`]), so that reports mean the same in both modes.
//!
//! Latency differs by where it is taken: the sink timestamps a packet when XDP sees it on the
//! generator's interface, the socket receiver after `recvmmsg` returned it to user space (its
//! own stack and scheduling included). Percentiles come from a log-linear histogram (32
//! sub-buckets per power of two, read back at bucket midpoints: within 1.6 %); mean and
//! maximum are exact.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode, links::FdLink},
    util::nr_cpus,
};
use hdrhistogram::Histogram;
use rtpedge_common::sink::{
    LATENCY_BUCKETS, SINK_MAX_STREAMS, SINK_PROGRAM, SinkConfig, SinkStream, SinkTotals,
    latency_bucket_mid, map_names,
};
use rtpedge_dataplane::SINK_BPF_OBJECT;

use super::{account::StreamRx, traffic::Endpoints, traffic::latency_histogram};
use crate::Error;

/// The sink, loaded and attached to one interface; detached when dropped.
pub struct XdpSink {
    interface: String,
    // Declared before `bpf`: the link goes first (detach), then the program and maps.
    _link: FdLink,
    config: Array<MapData, SinkConfig>,
    ports: Array<MapData, u32>,
    streams: Array<MapData, SinkStream>,
    latency: PerCpuArray<MapData, u64>,
    totals: PerCpuArray<MapData, SinkTotals>,
    /// Ports currently mapped to a stream (cleared before the next set of calls is mapped).
    mapped_ports: Vec<u16>,
    /// Streams of the current step.
    streams_in_use: usize,
    cpus: usize,
    _bpf: Ebpf,
}

/// What the sink saw in one step, in the socket receiver's terms.
pub struct SinkReading {
    /// Per stream.
    pub rx: Vec<StreamRx>,
    /// Latency in nanoseconds (bucket midpoints).
    pub hist: Histogram<u64>,
    /// Exact mean latency, ns (`None` without samples).
    pub mean_ns: Option<f64>,
    /// Exact maximum latency, ns.
    pub max_ns: u64,
    /// Packets of the step on another stream's port.
    pub misrouted: u64,
    /// Packets of another step or of the warm-up.
    pub stale: u64,
    /// Packets to a generator port without a valid stamp.
    pub foreign: u64,
}

fn bpf_err<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> Error {
    let what = what.into();
    move |e| Error::Bpf {
        what,
        source: Box::new(e),
    }
}

impl XdpSink {
    /// Loads the sink and attaches it in native (driver) mode to `interface`, in this
    /// process's network namespace. Fails if the interface has another XDP program.
    pub fn attach(interface: &str) -> Result<XdpSink, Error> {
        let mut bpf = EbpfLoader::new()
            .load(SINK_BPF_OBJECT)
            .map_err(bpf_err("loading the XDP sink's object"))?;
        let prog: &mut Xdp = bpf
            .program_mut(SINK_PROGRAM)
            .ok_or_else(|| Error::Invalid(format!("no program {SINK_PROGRAM} in the sink object")))?
            .try_into()
            .map_err(bpf_err("the sink program is not XDP"))?;
        prog.load()
            .map_err(bpf_err("loading xdp_sink (verifier)"))?;
        let id = prog
            .attach(interface, XdpMode::Driver)
            .map_err(bpf_err(format!(
                "attaching xdp_sink to {interface} in native mode (does it have another XDP program?)"
            )))?;
        let link = prog
            .take_link(id)
            .map_err(bpf_err("taking the sink's link"))?;
        // A netlink attachment (kernels before 5.9) would outlive a killed process.
        let link = FdLink::try_from(link).map_err(|_| {
            Error::Invalid(format!(
                "xdp_sink on {interface} was attached through netlink, not a bpf_link: \
                 refusing, it would stay attached if this process were killed"
            ))
        })?;
        let mut take = |name: &str| {
            bpf.take_map(name)
                .ok_or_else(|| Error::Invalid(format!("no map {name} in the sink object")))
        };
        let config = Array::try_from(take(map_names::SINK_CONFIG)?)
            .map_err(bpf_err(map_names::SINK_CONFIG))?;
        let ports = Array::try_from(take(map_names::SINK_PORTS)?)
            .map_err(bpf_err(map_names::SINK_PORTS))?;
        let streams = Array::try_from(take(map_names::SINK_STREAMS)?)
            .map_err(bpf_err(map_names::SINK_STREAMS))?;
        let latency = PerCpuArray::try_from(take(map_names::SINK_LATENCY)?)
            .map_err(bpf_err(map_names::SINK_LATENCY))?;
        let totals = PerCpuArray::try_from(take(map_names::SINK_TOTALS)?)
            .map_err(bpf_err(map_names::SINK_TOTALS))?;
        let cpus = nr_cpus().map_err(|(_, e)| Error::Io {
            what: "counting possible CPUs".into(),
            source: e,
        })?;
        Ok(XdpSink {
            interface: interface.to_owned(),
            _link: link,
            config,
            ports,
            streams,
            latency,
            totals,
            mapped_ports: Vec::new(),
            streams_in_use: 0,
            cpus,
            _bpf: bpf,
        })
    }

    /// The interface the sink is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Maps the ports of `eps` to their streams (stream `i` must arrive on the port of
    /// `sockets[peer[i]]`), makes `step` the measured step, and zeroes every counter. Call
    /// before the step's traffic starts.
    pub fn prepare(&mut self, step: u32, eps: &Endpoints) -> Result<(), Error> {
        let n = eps.streams();
        if n > SINK_MAX_STREAMS as usize {
            return Err(Error::Invalid(format!(
                "{n} streams: the sink accounts for at most {SINK_MAX_STREAMS}"
            )));
        }
        // The new step id first, so that nothing from here on lands in the streams being zeroed
        // (this step's own packets only come once the sender starts).
        let streams = n as u32; // n <= SINK_MAX_STREAMS, checked above
        self.config
            .set(0, SinkConfig { step, streams }, 0)
            .map_err(bpf_err("writing the sink's step"))?;
        for p in std::mem::take(&mut self.mapped_ports) {
            self.ports
                .set(u32::from(p), 0, 0)
                .map_err(bpf_err("clearing the sink's port map"))?;
        }
        for (stream, &dst) in eps.peer.iter().enumerate() {
            let port = eps
                .sockets
                .get(dst)
                .and_then(|s| s.local_addr().ok())
                .map(|a| a.port())
                .ok_or_else(|| Error::Invalid(format!("no local port for socket {dst}")))?;
            // stream < SINK_MAX_STREAMS, checked above.
            self.ports
                .set(u32::from(port), stream as u32 + 1, 0)
                .map_err(bpf_err("writing the sink's port map"))?;
            self.mapped_ports.push(port);
        }
        for i in 0..n.max(self.streams_in_use) {
            self.streams
                .set(i as u32, SinkStream::default(), 0)
                .map_err(bpf_err("zeroing the sink's streams"))?;
        }
        self.streams_in_use = n;
        for b in 0..LATENCY_BUCKETS {
            let zeros =
                PerCpuValues::try_from(vec![0u64; self.cpus]).map_err(bpf_err("per-CPU zeros"))?;
            self.latency
                .set(b, zeros, 0)
                .map_err(bpf_err("zeroing the sink's latency histogram"))?;
        }
        let zero_totals = PerCpuValues::try_from(vec![SinkTotals::default(); self.cpus])
            .map_err(bpf_err("per-CPU zeros"))?;
        self.totals
            .set(0, zero_totals, 0)
            .map_err(bpf_err("zeroing the sink's totals"))?;
        Ok(())
    }

    fn totals(&self) -> Result<SinkTotals, Error> {
        let per_cpu = self
            .totals
            .get(&0, 0)
            .map_err(bpf_err("reading the sink's totals"))?;
        let mut t = SinkTotals::default();
        for c in per_cpu.iter() {
            t.counted += c.counted;
            t.stale += c.stale;
            t.misrouted += c.misrouted;
            t.foreign += c.foreign;
            t.latency_sum_ns += c.latency_sum_ns;
            t.latency_max_ns = t.latency_max_ns.max(c.latency_max_ns);
        }
        Ok(t)
    }

    /// Packets the sink has taken since [`prepare`](Self::prepare), of any kind: it grows
    /// while traffic still arrives (the drain after a step waits until it stops).
    pub fn progress(&self) -> Result<u64, Error> {
        let t = self.totals()?;
        Ok(t.counted + t.stale + t.misrouted + t.foreign)
    }

    /// Reads the step's accounting.
    pub fn read(&self) -> Result<SinkReading, Error> {
        let t = self.totals()?;
        let mut rx = Vec::with_capacity(self.streams_in_use);
        for i in 0..self.streams_in_use {
            let s = self
                .streams
                .get(&(i as u32), 0)
                .map_err(bpf_err("reading the sink's streams"))?;
            rx.push(StreamRx::from_counts(s.received, s.duplicates, s.reordered));
        }
        let mut hist = latency_histogram();
        let mut samples = 0u64;
        for b in 0..LATENCY_BUCKETS {
            let n: u64 = self
                .latency
                .get(&b, 0)
                .map_err(bpf_err("reading the sink's latency histogram"))?
                .iter()
                .sum();
            if n > 0 {
                samples += n;
                hist.saturating_record_n(latency_bucket_mid(b).max(1), n);
            }
        }
        Ok(SinkReading {
            rx,
            hist,
            mean_ns: (samples > 0).then(|| t.latency_sum_ns as f64 / samples as f64),
            max_ns: t.latency_max_ns,
            misrouted: t.misrouted,
            stale: t.stale,
            foreign: t.foreign,
        })
    }
}
