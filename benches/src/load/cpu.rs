//! CPU time from `/proc`: of a process (the relay), of some threads of this process (the
//! in-process bridge's workers), or of this process without them (the generator). Values are
//! `utime + stime` in seconds (clock ticks divided by `CLK_TCK`); the kernel samples them at
//! the tick, so intervals of a few seconds are needed for a percent of precision.

use std::{fs, io, path::Path};

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `(comm, utime + stime in ticks)` from the text of a `/proc/.../stat` file. The command name
/// is in parentheses and may itself contain spaces and parentheses, so the fields are counted
/// from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // After ") ": field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let mut rest = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

fn ticks_of(path: &Path) -> io::Result<(String, u64)> {
    let text = fs::read_to_string(path)?;
    parse_stat(&text)
        .map(|(c, t)| (c.to_owned(), t))
        .ok_or_else(|| io::Error::other(format!("cannot parse {}", path.display())))
}

/// CPU seconds of process `pid` (all its threads).
pub fn process_seconds(pid: u32) -> io::Result<f64> {
    let (_, t) = ticks_of(Path::new(&format!("/proc/{pid}/stat")))?;
    Ok(t as f64 / clk_tck())
}

/// Thread ids and names of this process's threads whose name starts with `prefix`.
pub fn own_threads(prefix: &str) -> io::Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between listing and reading: skip it.
        if let Ok((comm, _)) = ticks_of(&entry.path().join("stat"))
            && comm.starts_with(prefix)
        {
            out.push((tid, comm));
        }
    }
    out.sort();
    Ok(out)
}

/// CPU seconds of this process's threads named `prefix*`, and of all its other threads.
pub fn own_split_seconds(prefix: &str) -> io::Result<(f64, f64)> {
    let (mut named, mut other) = (0u64, 0u64);
    for entry in fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        if let Ok((comm, t)) = ticks_of(&entry.path().join("stat")) {
            if comm.starts_with(prefix) {
                named += t;
            } else {
                other += t;
            }
        }
    }
    let tck = clk_tck();
    Ok((named as f64 / tck, other as f64 / tck))
}

/// CPU seconds of this whole process.
pub fn own_seconds() -> io::Result<f64> {
    Ok(ticks_of(Path::new("/proc/self/stat"))?.1 as f64 / clk_tck())
}

/// Busy CPU seconds of the whole machine (all CPUs: user, nice, system, irq, softirq, steal),
/// from the first line of `/proc/stat`.
pub fn system_busy_seconds() -> io::Result<f64> {
    let text = fs::read_to_string("/proc/stat")?;
    parse_proc_stat_busy(&text)
        .map(|t| t as f64 / clk_tck())
        .ok_or_else(|| io::Error::other("cannot parse /proc/stat"))
}

/// Busy CPU seconds of one CPU (everything that ran on it: processes, kernel threads such as
/// threaded NAPI, interrupts, softirqs), from its `cpuN` line of `/proc/stat`.
pub fn core_busy_seconds(cpu: usize) -> io::Result<f64> {
    let text = fs::read_to_string("/proc/stat")?;
    parse_proc_stat_busy_of(&text, &format!("cpu{cpu} "))
        .map(|t| t as f64 / clk_tck())
        .ok_or_else(|| io::Error::other(format!("no cpu{cpu} line in /proc/stat")))
}

/// Busy ticks from the `cpu` line of `/proc/stat` (everything but idle and iowait; guest time
/// is already part of user time).
pub fn parse_proc_stat_busy(text: &str) -> Option<u64> {
    parse_proc_stat_busy_of(text, "cpu ")
}

fn parse_proc_stat_busy_of(text: &str, prefix: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    Some(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// Pins thread `tid` (0: the calling thread) to one CPU.
pub fn pin(tid: u32, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu < CPU_SETSIZE, which
    // sched_setaffinity then validates against the machine.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::other(format!("CPU {cpu} out of range")));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Where the relay's CPU time comes from.
#[derive(Clone, Debug)]
pub enum RelayCpu {
    /// Not measured.
    None,
    /// An external relay process.
    Process(u32),
    /// Threads of this process with this name prefix (the in-process bridge's workers).
    Threads(&'static str),
    /// Everything that runs on this CPU (a relay pinned there, with the kernel work that was
    /// steered to it, e.g. threaded NAPI or the XDP fast path).
    Core(usize),
}

/// A reading of relay and generator CPU seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// The relay's CPU seconds (None: not measured or not readable).
    pub relay: Option<f64>,
    /// This process's CPU seconds, without the relay's threads when they are in-process.
    pub generator: Option<f64>,
    /// Busy CPU seconds of the whole machine.
    pub system: Option<f64>,
}

impl CpuSample {
    /// CPU use between two samples over `secs` seconds, in percent of one core:
    /// `(relay, generator, everything else)`. "Everything else" is background load (other
    /// processes, interrupts) that makes a measurement noisy.
    pub fn usage_pct(
        &self,
        later: &CpuSample,
        secs: f64,
    ) -> (Option<f64>, Option<f64>, Option<f64>) {
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if secs > 0.0 => Some((b - a).max(0.0) * 100.0 / secs),
            _ => None,
        };
        let relay = d(self.relay, later.relay);
        let generator = d(self.generator, later.generator);
        let system = d(self.system, later.system);
        let other = system.map(|s| (s - relay.unwrap_or(0.0) - generator.unwrap_or(0.0)).max(0.0));
        (relay, generator, other)
    }
}

impl RelayCpu {
    /// Reads both counters now.
    pub fn sample(&self) -> CpuSample {
        let system = system_busy_seconds().ok();
        match self {
            RelayCpu::None => CpuSample {
                relay: None,
                generator: own_seconds().ok(),
                system,
            },
            RelayCpu::Process(pid) => CpuSample {
                relay: process_seconds(*pid).ok(),
                generator: own_seconds().ok(),
                system,
            },
            RelayCpu::Core(cpu) => CpuSample {
                relay: core_busy_seconds(*cpu).ok(),
                generator: own_seconds().ok(),
                system,
            },
            RelayCpu::Threads(prefix) => match own_split_seconds(prefix) {
                Ok((r, g)) => CpuSample {
                    relay: Some(r),
                    generator: Some(g),
                    system,
                },
                Err(_) => CpuSample {
                    system,
                    ..CpuSample::default()
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_names() {
        let stat = "1234 (rtp (engine) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 5 0 100 1000 200";
        assert_eq!(parse_stat(stat), Some(("rtp (engine) x", 325)));
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  306537 1 100897 330726 3424 2 27530 498 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_proc_stat_busy(text),
            Some(306537 + 1 + 100897 + 2 + 27530 + 498)
        );
        assert_eq!(parse_proc_stat_busy("cpu 1 2 3\n"), None);
        assert_eq!(
            parse_proc_stat_busy_of(text, "cpu0 "),
            Some(1 + 2 + 3 + 6 + 7 + 8)
        );
        assert_eq!(parse_proc_stat_busy_of(text, "cpu1 "), None);
        assert!(core_busy_seconds(0).unwrap() > 0.0);
        assert!(system_busy_seconds().unwrap() > 0.0);
        let a = CpuSample {
            relay: Some(1.0),
            generator: Some(2.0),
            system: Some(10.0),
        };
        let b = CpuSample {
            relay: Some(1.5),
            generator: Some(2.25),
            system: Some(11.0),
        };
        assert_eq!(a.usage_pct(&b, 1.0), (Some(50.0), Some(25.0), Some(25.0)));
        assert_eq!(a.usage_pct(&b, 0.0), (None, None, None));
    }

    #[test]
    fn reads_own_process_and_threads() {
        // Burn a little CPU in a named thread so that the split has something to show.
        let h = std::thread::Builder::new()
            .name("cputest-burn".into())
            .spawn(|| {
                let names = own_threads("cputest-").unwrap();
                assert_eq!(names.len(), 1);
                assert_eq!(names[0].1, "cputest-burn");
            })
            .unwrap();
        h.join().unwrap();
        assert!(own_seconds().is_ok());
        assert!(process_seconds(std::process::id()).is_ok());
        let (named, _other) = own_split_seconds("no-such-thread-").unwrap();
        assert_eq!(named, 0.0);
        assert!(clk_tck() >= 1.0);
    }
}
