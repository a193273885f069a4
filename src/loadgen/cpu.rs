//! Where the CPU went during a run, from Linux's `/proc`: the load
//! generator's own time, the daemon's, and the whole machine's. On a small
//! machine the generator competes with the daemon for the same cores, and a
//! busy neighbour (a compiler) skews every number, so the report says both.

use std::fs;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Clock ticks per second in `/proc/*/stat` and `/proc/stat` (USER_HZ).
/// Linux fixes it at 100 on every architecture it exports it for; nix's
/// `sysconf` sits behind a feature this crate does not enable.
const USER_HZ: f64 = 100.0;

/// user + system ticks of process `pid` (`"self"` for this one).
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted
    // after its closing one. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, all) ticks of the whole machine, summed over its cores; idle and
/// iowait are not busy.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let all: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((all - idle, all))
}

/// Online cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The process listening on TCP `port` of this machine, found through the
/// socket's inode in `/proc/net/tcp{,6}` and the owners' `/proc/*/fd`. None
/// if it is not here or not ours to look at.
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|p| {
        let table = fs::read_to_string(p).ok()?;
        table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9).map(|s| s.to_string()))?
        })
    })?;
    socket_owner(&inode)
}

/// The process listening on the Unix socket at `path`, found the same way
/// through `/proc/net/unix`, which names a socket by the path it was bound
/// to (as given, so relative paths are tried both ways).
pub fn unix_listener_pid(path: &std::path::Path) -> Option<u32> {
    let absolute = fs::canonicalize(path).ok();
    let table = fs::read_to_string("/proc/net/unix").ok()?;
    let inode = table.lines().skip(1).find_map(|l| {
        // Num RefCount Protocol Flags Type St Inode Path; a listener has
        // __SO_ACCEPTCON (flag 0x10000) set.
        let f: Vec<&str> = l.split_whitespace().collect();
        let bound = std::path::Path::new(f.get(7)?);
        let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x1_0000 != 0;
        (listening && (bound == path || Some(bound) == absolute.as_deref()))
            .then(|| f.get(6).map(|s| s.to_string()))?
    })?;
    socket_owner(&inode)
}

/// The process holding socket `inode` open.
fn socket_owner(inode: &str) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let fds = fs::read_dir(e.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(target.as_str())))
            .then_some(pid)
    })
}

/// One reading of all three clocks.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    bench: Option<u64>,
    daemon: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl Sample {
    pub fn take(daemon_pid: Option<u32>) -> Sample {
        Sample {
            at: Instant::now(),
            bench: process_ticks("self"),
            daemon: daemon_pid.and_then(|p| process_ticks(&p.to_string())),
            machine: machine_ticks(),
        }
    }
}

/// CPU used between two samples, in cores (CPU seconds per wall second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuSplit {
    pub wall_s: f64,
    pub cores: usize,
    /// This load generator.
    pub bench_cores: Option<f64>,
    pub daemon_pid: Option<u32>,
    pub daemon_cores: Option<f64>,
    /// Everything else that ran on the machine meanwhile: other processes
    /// and the kernel's work not charged to either.
    pub other_cores: Option<f64>,
    /// CPU per operation of the window, microseconds: what one operation
    /// costs the generator and the daemon, which on a shared machine bounds
    /// throughput at `cores / (bench + daemon)` whatever else is tuned.
    pub bench_us_per_op: Option<f64>,
    pub daemon_us_per_op: Option<f64>,
}

impl CpuSplit {
    pub fn between(a: &Sample, b: &Sample, daemon_pid: Option<u32>) -> CpuSplit {
        let wall_s = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let cores_of = |ticks: u64| ticks as f64 / USER_HZ / wall_s;
        let diff = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?));
        let bench = diff(a.bench, b.bench);
        let daemon = diff(a.daemon, b.daemon);
        let machine = diff(a.machine.map(|m| m.0), b.machine.map(|m| m.0));
        let other = machine.map(|m| {
            m.saturating_sub(bench.unwrap_or(0))
                .saturating_sub(daemon.unwrap_or(0))
        });
        CpuSplit {
            wall_s,
            cores: cores(),
            bench_cores: bench.map(cores_of),
            daemon_pid: daemon.and(daemon_pid),
            daemon_cores: daemon.map(cores_of),
            other_cores: other.map(cores_of),
            bench_us_per_op: None,
            daemon_us_per_op: None,
        }
    }

    /// Fills in the per-operation costs, given `ops` done in the window.
    pub fn per_op(mut self, ops: u64) -> CpuSplit {
        let us = |cores: Option<f64>| {
            cores
                .filter(|_| ops > 0)
                .map(|c| c * self.wall_s * 1e6 / ops as f64)
        };
        self.bench_us_per_op = us(self.bench_cores);
        self.daemon_us_per_op = us(self.daemon_cores);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_listening_and_its_cpu_is_counted() {
        // Invariant: the daemon's pid is found from its port or its socket
        // path alone, and a
        // busy loop shows up as this process's CPU time.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wconf.sock");
        let _unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(unix_listener_pid(&path), Some(std::process::id()));
        assert_eq!(unix_listener_pid(&dir.path().join("other.sock")), None);
        // Spin until the kernel has charged this process at least one more
        // tick (polled, with a deadline rather than a fixed time).
        let a = Sample::take(None);
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        while process_ticks("self") <= a.bench {
            assert!(Instant::now() < deadline, "no CPU time was ever charged");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        let split = CpuSplit::between(&a, &Sample::take(None), None);
        assert!(split.bench_cores.unwrap() > 0.0, "{split:?}");
        assert_eq!(split.daemon_cores, None);
    }
}
