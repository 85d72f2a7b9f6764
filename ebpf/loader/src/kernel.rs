//! [`Dataplane`] over the kernel's maps, opened from their pins (the daemon, the operator CLI) or
//! taken from a freshly loaded object (BPF_PROG_TEST_RUN tests).
//!
//! Write order keeps the kernel consistent at every instant: a pinhole's stats entry is created
//! before its config entry and removed after it, so the program never finds a pinhole without
//! counters; a learned source is cleared before a config that must not keep it is published.

use std::{net::SocketAddr, path::Path, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use rtpedge_common::{
    Config, Counter, Forward, LearnedSource, MAX_PINHOLES, META_MAGIC, Meta, NextHop, Pinhole,
    PinholeKey, PinholeStats, SCHEMA_VERSION, map_names, policy, rtp_stats::StreamStats, state,
};

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

use crate::{
    Dataplane, DataplaneError, Dscp, GlobalCounters, PinholeCounters, PinholeInfo, PinholeSpec,
    RateLimit,
    clock::monotonic_ns,
    fake::keeps_learned,
    types::{ForwardSpec, addr_from_map, info_of, key_of, pinhole_value},
};

/// Handle on the data plane's maps.
pub struct KernelDataplane {
    pinholes: HashMap<MapData, PinholeKey, Pinhole>,
    stats: PerCpuHashMap<MapData, PinholeKey, PinholeStats>,
    learned: HashMap<MapData, PinholeKey, LearnedSource>,
    forwards: HashMap<MapData, PinholeKey, Forward>,
    next_hops: HashMap<MapData, PinholeKey, NextHop>,
    rtp_stats: HashMap<MapData, PinholeKey, StreamStats>,
    counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, Config>,
    meta: Array<MapData, Meta>,
    nr_cpus: usize,
}

/// Expected kernel map type, key size, value size and capacity of each map.
pub(crate) fn expected_layout(name: &str) -> Option<(aya::maps::MapType, u32, u32, u32)> {
    use aya::maps::MapType as T;
    use core::mem::size_of;
    let sz = |n: usize| n as u32;
    Some(match name {
        map_names::PINHOLES => (
            T::Hash,
            sz(size_of::<PinholeKey>()),
            sz(size_of::<Pinhole>()),
            MAX_PINHOLES,
        ),
        map_names::PINHOLE_STATS => (
            T::PerCpuHash,
            sz(size_of::<PinholeKey>()),
            sz(size_of::<PinholeStats>()),
            MAX_PINHOLES,
        ),
        map_names::LEARNED => (
            T::Hash,
            sz(size_of::<PinholeKey>()),
            sz(size_of::<LearnedSource>()),
            MAX_PINHOLES,
        ),
        map_names::COUNTERS => (T::PerCpuArray, 4, 8, Counter::COUNT),
        map_names::CONFIG => (T::Array, 4, sz(size_of::<Config>()), 1),
        map_names::META => (T::Array, 4, sz(size_of::<Meta>()), 1),
        map_names::FORWARDS => (
            T::Hash,
            sz(size_of::<PinholeKey>()),
            sz(size_of::<Forward>()),
            MAX_PINHOLES,
        ),
        map_names::NEXTHOPS => (
            T::Hash,
            sz(size_of::<PinholeKey>()),
            sz(size_of::<NextHop>()),
            MAX_PINHOLES,
        ),
        map_names::RTP_STATS => (
            T::Hash,
            sz(size_of::<PinholeKey>()),
            sz(size_of::<StreamStats>()),
            MAX_PINHOLES,
        ),
        _ => return None,
    })
}

fn map_err(context: &str) -> impl FnOnce(MapError) -> DataplaneError + '_ {
    move |e| DataplaneError::bpf(context.to_string(), e)
}

/// Checks a map's kernel-side layout against what this build expects.
pub(crate) fn check_layout(name: &str, data: &MapData, path: &Path) -> Result<(), DataplaneError> {
    let info = data.info().map_err(map_err("reading map info"))?;
    let (ty, k, v, n) = expected_layout(name)
        .ok_or_else(|| DataplaneError::Invalid(format!("unknown map {name}")))?;
    let got_ty = info.map_type().map_err(map_err("reading map type"))?;
    if got_ty != ty || info.key_size() != k || info.value_size() != v || info.max_entries() != n {
        return Err(DataplaneError::MapLayout {
            path: path.to_path_buf(),
            detail: format!(
                "type {got_ty:?}, key {} B, value {} B, {} entries; expected {ty:?}, {k} B, {v} B, {n}",
                info.key_size(),
                info.value_size(),
                info.max_entries()
            ),
        });
    }
    Ok(())
}

impl KernelDataplane {
    /// Opens the pinned maps in `maps_dir`, checking the schema stamp and every map's layout.
    pub fn open_pinned(maps_dir: &Path) -> Result<Self, DataplaneError> {
        let mut take = |name: &str| -> Result<Map, DataplaneError> {
            let path = maps_dir.join(name);
            let data = MapData::from_pin(&path).map_err(|e| {
                let msg = crate::error::error_chain(&e);
                if msg.contains("No such file") {
                    DataplaneError::NotLoaded(maps_dir.to_path_buf())
                } else {
                    DataplaneError::bpf(format!("opening {}", path.display()), e)
                }
            })?;
            check_layout(name, &data, &path)?;
            Map::from_map_data(data).map_err(map_err("wrapping pinned map"))
        };
        let dp = Self::from_maps(&mut take)?;
        let meta = dp.meta.get(&0, 0).map_err(map_err("reading META"))?;
        if meta.magic != META_MAGIC || meta.schema != SCHEMA_VERSION {
            return Err(DataplaneError::SchemaMismatch {
                path: maps_dir.to_path_buf(),
                found: if meta.magic == META_MAGIC {
                    meta.schema
                } else {
                    0
                },
                expected: SCHEMA_VERSION,
            });
        }
        Ok(dp)
    }

    /// Builds the handle from maps of a loaded object (`take` hands out each map by name).
    pub fn from_maps(
        take: &mut dyn FnMut(&str) -> Result<Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        let nr_cpus = aya::util::nr_cpus().map_err(|(what, e)| DataplaneError::bpf(what, e))?;
        Ok(Self {
            pinholes: HashMap::try_from(take(map_names::PINHOLES)?).map_err(map_err("PINHOLES"))?,
            stats: PerCpuHashMap::try_from(take(map_names::PINHOLE_STATS)?)
                .map_err(map_err("PINHOLE_STATS"))?,
            learned: HashMap::try_from(take(map_names::LEARNED)?).map_err(map_err("LEARNED"))?,
            forwards: HashMap::try_from(take(map_names::FORWARDS)?).map_err(map_err("FORWARDS"))?,
            next_hops: HashMap::try_from(take(map_names::NEXTHOPS)?)
                .map_err(map_err("NEXTHOPS"))?,
            rtp_stats: HashMap::try_from(take(map_names::RTP_STATS)?)
                .map_err(map_err("RTP_STATS"))?,
            counters: PerCpuArray::try_from(take(map_names::COUNTERS)?)
                .map_err(map_err("COUNTERS"))?,
            config: Array::try_from(take(map_names::CONFIG)?).map_err(map_err("CONFIG"))?,
            meta: Array::try_from(take(map_names::META)?).map_err(map_err("META"))?,
            nr_cpus,
        })
    }

    /// Stamps the schema (done once, when the maps are created).
    pub(crate) fn stamp_schema(&mut self) -> Result<(), DataplaneError> {
        self.meta
            .set(
                0,
                Meta {
                    magic: META_MAGIC,
                    schema: SCHEMA_VERSION,
                },
                0,
            )
            .map_err(map_err("writing META"))
    }

    /// Whether the schema stamp is present (false for freshly created maps).
    pub(crate) fn is_stamped(&self) -> Result<bool, DataplaneError> {
        Ok(self.meta.get(&0, 0).map_err(map_err("reading META"))?.magic == META_MAGIC)
    }

    /// The media port range the programs enforce.
    pub fn port_range(&self) -> Result<(u16, u16), DataplaneError> {
        let c = self.config.get(&0, 0).map_err(map_err("reading CONFIG"))?;
        Ok((c.port_min, c.port_max))
    }

    /// Sets the media port range (takes effect on the next packet).
    pub fn set_port_range(&mut self, lo: u16, hi: u16) -> Result<(), DataplaneError> {
        if lo == 0 || lo > hi {
            return Err(DataplaneError::Invalid(format!(
                "port range {lo}-{hi}: need 0 < LO <= HI"
            )));
        }
        self.config
            .set(
                0,
                Config {
                    port_min: lo,
                    port_max: hi,
                    flags: 0,
                },
                0,
            )
            .map_err(map_err("writing CONFIG"))
    }

    fn get(&self, key: &PinholeKey) -> Result<Option<Pinhole>, DataplaneError> {
        match self.pinholes.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(DataplaneError::bpf("reading PINHOLES", e)),
        }
    }

    fn put(&mut self, key: &PinholeKey, ph: Pinhole) -> Result<(), DataplaneError> {
        self.pinholes
            .insert(key, ph, 0)
            .map_err(|e| full_or(e, "writing PINHOLES"))
    }

    fn modify(
        &mut self,
        local: SocketAddr,
        f: impl FnOnce(&mut Pinhole),
    ) -> Result<(), DataplaneError> {
        let key = key_of(local)?;
        let mut ph = self
            .get(&key)?
            .ok_or(DataplaneError::NoSuchPinhole(local))?;
        f(&mut ph);
        self.put(&key, ph)
    }

    fn learned_of(&self, key: &PinholeKey) -> Result<Option<SocketAddr>, DataplaneError> {
        match self.learned.get(key, 0) {
            Ok(l) => Ok(Some(SocketAddr::new(addr_from_map(l.addr), l.port))),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(DataplaneError::bpf("reading LEARNED", e)),
        }
    }

    fn counters_of(&self, key: &PinholeKey, now: u64) -> Result<PinholeCounters, DataplaneError> {
        let per_cpu = match self.stats.get(key, 0) {
            Ok(v) => v,
            Err(e) if is_missing(&e) => return Ok(PinholeCounters::default()),
            Err(e) => return Err(DataplaneError::bpf("reading PINHOLE_STATS", e)),
        };
        let mut c = PinholeCounters::default();
        let mut last = 0u64;
        for s in per_cpu.iter() {
            c.packets += s.packets;
            c.bytes += s.bytes;
            c.dropped_closed += s.dropped_closed;
            c.dropped_wrong_source += s.dropped_wrong_source;
            c.dropped_rate_limited += s.dropped_rate_limited;
            c.tx_packets += s.tx_packets;
            c.tx_bytes += s.tx_bytes;
            c.forwarded_packets += s.fwd_packets;
            c.forwarded_bytes += s.fwd_bytes;
            last = last.max(s.last_seen_ns);
        }
        c.idle = (last != 0).then(|| Duration::from_nanos(now.saturating_sub(last)));
        Ok(c)
    }

    fn info_for(
        &self,
        key: &PinholeKey,
        ph: &Pinhole,
        now: u64,
    ) -> Result<PinholeInfo, DataplaneError> {
        Ok(info_of(
            key,
            ph,
            self.learned_of(key)?,
            self.counters_of(key, now)?,
            now,
        ))
    }

    /// Number of pinholes.
    pub fn pinhole_count(&self) -> Result<usize, DataplaneError> {
        let mut n = 0;
        for k in self.pinholes.keys() {
            k.map_err(map_err("listing PINHOLES"))?;
            n += 1;
        }
        Ok(n)
    }
}

/// Whether a map error means "no such key" (aya reports a failed delete as a raw ENOENT).
fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Deletes `key` from a map if present; returns whether it was there.
fn remove_present(r: Result<(), MapError>, context: &str) -> Result<bool, DataplaneError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(DataplaneError::bpf(context.to_string(), e)),
    }
}

fn full_or(e: MapError, context: &str) -> DataplaneError {
    let msg = crate::error::error_chain(&e);
    if msg.contains("No space left") || msg.contains("Argument list too long") {
        DataplaneError::TableFull(MAX_PINHOLES)
    } else {
        DataplaneError::bpf(context.to_string(), e)
    }
}

impl Dataplane for KernelDataplane {
    fn open_pinhole(&mut self, spec: &PinholeSpec) -> Result<(), DataplaneError> {
        let key = key_of(spec.local)?;
        let ph = pinhole_value(spec, true, monotonic_ns())?;
        match self.get(&key)? {
            Some(old) => {
                if !keeps_learned(&old, &ph) {
                    remove_present(self.learned.remove(&key), "clearing LEARNED")?;
                }
            }
            None => {
                // Fresh pinhole: zeroed counters first, then a clean latch, then the config.
                let zero = PerCpuValues::try_from(vec![PinholeStats::default(); self.nr_cpus])
                    .map_err(|e| DataplaneError::bpf("building stats", e))?;
                self.stats
                    .insert(key, zero, 0)
                    .map_err(|e| full_or(e, "writing PINHOLE_STATS"))?;
                remove_present(self.learned.remove(&key), "clearing LEARNED")?;
            }
        }
        self.put(&key, ph)
    }

    fn close_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError> {
        self.modify(local, |ph| ph.state = state::CLOSED)
    }

    fn remove_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError> {
        let key = key_of(local)?;
        if !remove_present(self.pinholes.remove(&key), "removing from PINHOLES")? {
            return Err(DataplaneError::NoSuchPinhole(local));
        }
        remove_present(self.forwards.remove(&key), "removing from FORWARDS")?;
        remove_present(self.next_hops.remove(&key), "removing from NEXTHOPS")?;
        remove_present(self.rtp_stats.remove(&key), "removing from RTP_STATS")?;
        remove_present(self.learned.remove(&key), "removing from LEARNED")?;
        remove_present(self.stats.remove(&key), "removing from PINHOLE_STATS")?;
        Ok(())
    }

    fn set_dscp(&mut self, local: SocketAddr, dscp: Option<Dscp>) -> Result<(), DataplaneError> {
        self.modify(local, |ph| {
            ph.dscp = dscp.map_or(rtpedge_common::DSCP_NONE, Dscp::value)
        })
    }

    fn set_rate_limit(
        &mut self,
        local: SocketAddr,
        rate: Option<RateLimit>,
    ) -> Result<(), DataplaneError> {
        self.modify(local, |ph| {
            ph.rate_pps = rate.map_or(0, |r| r.pps);
            ph.burst = rate.map_or(0, |r| r.burst);
        })
    }

    fn relearn(
        &mut self,
        local: SocketAddr,
        window: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        let key = key_of(local)?;
        let mut ph = self
            .get(&key)?
            .ok_or(DataplaneError::NoSuchPinhole(local))?;
        if ph.policy != policy::LEARNING {
            return Err(DataplaneError::Invalid(format!(
                "pinhole {local} does not use the learning policy"
            )));
        }
        ph.learn_deadline_ns =
            window.map_or(0, |w| monotonic_ns().saturating_add(w.as_nanos() as u64));
        // New window first, then drop the latch: a packet in between is judged by the old latch.
        self.put(&key, ph)?;
        remove_present(self.learned.remove(&key), "clearing LEARNED").map(|_| ())
    }

    fn pinhole(&self, local: SocketAddr) -> Result<Option<PinholeInfo>, DataplaneError> {
        let key = key_of(local)?;
        match self.get(&key)? {
            Some(ph) => Ok(Some(self.info_for(&key, &ph, monotonic_ns())?)),
            None => Ok(None),
        }
    }

    fn pinholes(&self) -> Result<Vec<PinholeInfo>, DataplaneError> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for item in self.pinholes.iter() {
            let (key, ph) = item.map_err(map_err("listing PINHOLES"))?;
            out.push(self.info_for(&key, &ph, now)?);
        }
        out.sort_by_key(|i| i.local);
        Ok(out)
    }

    fn counters(&self) -> Result<GlobalCounters, DataplaneError> {
        let mut g = GlobalCounters::default();
        for c in Counter::ALL {
            let per_cpu = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err("reading COUNTERS"))?;
            g.0[c as usize] = per_cpu.iter().sum();
        }
        Ok(g)
    }

    fn learned_source(&self, local: SocketAddr) -> Result<Option<SocketAddr>, DataplaneError> {
        self.learned_of(&key_of(local)?)
    }
    fn set_forward(
        &mut self,
        local: SocketAddr,
        forward: Option<ForwardSpec>,
    ) -> Result<(), DataplaneError> {
        let key = key_of(local)?;
        match forward {
            Some(f) => {
                let value = f.to_map()?;
                // Only a pinhole's media is forwarded: refuse an entry nothing would reach.
                if self.get(&key)?.is_none() {
                    return Err(DataplaneError::NoSuchPinhole(local));
                }
                // The stream's statistics start with its first entry and survive re-entries
                // (BPF_NOEXIST keeps what the kernel counted so far).
                match self
                    .rtp_stats
                    .insert(key, StreamStats::new(f.clock_rate), BPF_NOEXIST)
                {
                    Ok(()) => {}
                    Err(MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(full_or(e, "writing RTP_STATS")),
                }
                self.forwards
                    .insert(key, value, 0)
                    .map_err(|e| full_or(e, "writing FORWARDS"))
            }
            None => {
                remove_present(self.forwards.remove(&key), "removing from FORWARDS").map(|_| ())
            }
        }
    }

    fn forward(&self, local: SocketAddr) -> Result<Option<ForwardSpec>, DataplaneError> {
        let key = key_of(local)?;
        match self.forwards.get(&key, 0) {
            Ok(f) => {
                let rate = self.forwarded_rtp(local)?.map_or(0, |s| s.clock_rate());
                Ok(Some(ForwardSpec::from_map(&f, rate)))
            }
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(DataplaneError::bpf("reading FORWARDS", e)),
        }
    }

    fn forwarded_rtp(&self, local: SocketAddr) -> Result<Option<StreamStats>, DataplaneError> {
        match self.rtp_stats.get(&key_of(local)?, 0) {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(DataplaneError::bpf("reading RTP_STATS", e)),
        }
    }
}
