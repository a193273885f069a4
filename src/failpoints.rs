//! The named failpoints of the storage paths: their one list ([`POINTS`]),
//! the [`failpoint!`] macro that places one (the `fail` crate's
//! `fail_point!` under the `failpoints` feature, nothing at all without
//! it), and, in a failpoints build, what `wconfd` reads from its
//! environment at start: a SIGKILL at the nth hit of one point
//! ([`KILL_ENV`]) and the `fail` crate's own `FAILPOINTS` actions (e.g.
//! `wal::fdatasync::before=return(EIO)`).
//!
//! Names are `module::op::when`. Adding a point: put its name in [`POINTS`]
//! (with its [`Stage`]) and place `failpoint!("name")` at the step, or
//! `failpoint!("name", |arg| Err(...))` where a `return` action should make
//! the step's I/O fail (see [`io_error`]). The test in
//! `tests/it/failpoints.rs` checks the list and the sources agree and
//! SIGKILLs the daemon at every listed point.

/// Where a point sits, which says how a drill reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Writing, syncing and acknowledging a batch (`wal::writer`).
    Write,
    /// Creating and switching to a new segment (`wal::segment`, `wal::writer`).
    Roll,
    /// Writing a snapshot and collecting old snapshots and segments.
    Snapshot,
    /// Start-up: recovery of the log, the snapshot load, replay, up to ready.
    Recovery,
}

/// Every failpoint in the code, with its stage, in the order of the steps.
/// Exactly these names are placed (a test greps the sources both ways).
pub const POINTS: &[(&str, Stage)] = &[
    // The write path (wal::writer::Writer::commit).
    ("wal::batch::encoded", Stage::Write),
    ("wal::write::before", Stage::Write),
    ("wal::write::after", Stage::Write),
    ("wal::fdatasync::before", Stage::Write),
    ("wal::fdatasync::after", Stage::Write),
    ("wal::ack::before", Stage::Write),
    // The segment roll (wal::writer::Writer::roll, wal::segment::create_segment).
    ("wal::roll::before", Stage::Roll),
    ("segment::create::before", Stage::Roll),
    ("segment::create_dir_fsync::before", Stage::Roll),
    ("segment::preallocate::before", Stage::Roll),
    ("segment::header_write::before", Stage::Roll),
    ("segment::fsync::before", Stage::Roll),
    ("segment::rename::before", Stage::Roll),
    ("segment::dir_fsync::before", Stage::Roll),
    ("wal::roll::switch", Stage::Roll),
    // The snapshot (snapshot::writer, snapshot::write, snapshot::collect, wal::gc).
    ("snapshot::handoff::received", Stage::Snapshot),
    ("snapshot::handoff::durable", Stage::Snapshot),
    ("snapshot::create::before", Stage::Snapshot),
    ("snapshot::body_write::before", Stage::Snapshot),
    ("snapshot::header_write::before", Stage::Snapshot),
    ("snapshot::fsync::before", Stage::Snapshot),
    ("snapshot::rename::before", Stage::Snapshot),
    ("snapshot::dir_fsync::before", Stage::Snapshot),
    ("snapshot::gc_unlink::before", Stage::Snapshot),
    ("snapshot::gc_dir_fsync::before", Stage::Snapshot),
    ("wal::gc_unlink::before", Stage::Snapshot),
    ("wal::gc_dir_fsync::before", Stage::Snapshot),
    // Recovery (wal::recovery, replay::recover_state, server).
    ("recovery::sync_existing::after", Stage::Recovery),
    ("recovery::scan::segment", Stage::Recovery),
    ("recovery::side_file::before", Stage::Recovery),
    ("recovery::truncate::before", Stage::Recovery),
    ("recovery::truncate_sync::before", Stage::Recovery),
    ("recovery::remove_temp::before", Stage::Recovery),
    ("snapshot::remove_temp::before", Stage::Recovery),
    ("replay::snapshot_load::before", Stage::Recovery),
    ("replay::snapshot_load::after", Stage::Recovery),
    ("replay::record::before", Stage::Recovery),
    ("server::ready::before", Stage::Recovery),
];

/// `<point>:<nth>`: `wconfd` SIGKILLs itself at the nth hit of the point.
pub const KILL_ENV: &str = "WCONF_FAILPOINT_KILL";
/// A file path: hits of the [`KILL_ENV`] point count only once this file
/// exists, so a drill can let start-up and its own checks pass first.
pub const ARM_ENV: &str = "WCONF_FAILPOINT_ARM";
/// `<point>:<nth>:<EIO|ENOSPC>`: the nth hit of the point (counted as for
/// [`KILL_ENV`], armed by [`ARM_ENV`]) fails its I/O call with that error.
/// Only points placed before an I/O call (with a return closure) can fail.
pub const FAULT_ENV: &str = "WCONF_FAILPOINT_FAULT";
/// The start of the line written to stderr when that fault is injected:
/// `wconfd failpoint fault <ERR> at <point> hit <nth>`.
pub const FAULT_REPORT: &str = "wconfd failpoint fault ";
/// The start of the line `wconfd` writes to stderr just before it raises
/// SIGKILL at a point: `wconfd failpoint SIGKILL at <point> hit <nth>`.
pub const KILL_REPORT: &str = "wconfd failpoint SIGKILL at ";

/// Whether this build has the failpoints compiled in.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// The stage of a listed point.
pub fn stage(point: &str) -> Option<Stage> {
    POINTS.iter().find(|(n, _)| *n == point).map(|(_, s)| *s)
}

/// Places the named failpoint: `fail::fail_point!` in a failpoints build,
/// nothing otherwise. The name must be a literal listed in [`POINTS`].
#[cfg(feature = "failpoints")]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name)
    };
    ($name:literal, $on_return:expr) => {
        if let Some(arg) = $crate::failpoints::injected_fault($name) {
            return ($on_return)(arg);
        }
        fail::fail_point!($name, $on_return)
    };
}

/// Places the named failpoint: nothing in this build (no `failpoints`).
#[cfg(not(feature = "failpoints"))]
macro_rules! failpoint {
    ($name:literal) => {};
    ($name:literal, $on_return:expr) => {};
}

pub(crate) use failpoint;

/// The error a `return(ARG)` action injects at an I/O step: `ENOSPC` or
/// `EIO` (the default, for any other argument).
#[cfg(feature = "failpoints")]
pub fn io_error(arg: Option<String>) -> std::io::Error {
    let errno = match arg.as_deref() {
        Some("ENOSPC") => nix::errno::Errno::ENOSPC,
        _ => nix::errno::Errno::EIO,
    };
    std::io::Error::from_raw_os_error(errno as i32)
}

/// The early return of a WAL step's failpoint: that step's I/O failed.
#[cfg(feature = "failpoints")]
pub(crate) fn wal_fault<'a, T>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(Option<String>) -> Result<T, crate::wal::WalError> + 'a {
    move |arg| Err(crate::wal::WalError::io(op, path, io_error(arg)))
}

/// The early return of a snapshot step's failpoint: that step's I/O failed.
#[cfg(feature = "failpoints")]
pub(crate) fn snapshot_fault<'a, T>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(Option<String>) -> Result<T, crate::snapshot::SnapshotError> + 'a {
    move |arg| {
        Err(crate::snapshot::SnapshotError::Io {
            op,
            path: path.to_path_buf(),
            source: std::sync::Arc::new(io_error(arg)),
        })
    }
}

/// What [`KILL_ENV`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillAt {
    pub point: String,
    pub nth: u64,
}

impl KillAt {
    /// Parses `<point>:<nth>`; the point must be listed and nth at least 1.
    pub fn parse(text: &str) -> Result<KillAt, String> {
        let (point, nth) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{KILL_ENV}={text:?}: expected <point>:<nth>"))?;
        if stage(point).is_none() {
            return Err(format!("{KILL_ENV}: unknown failpoint {point:?}"));
        }
        let nth = nth
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| format!("{KILL_ENV}={text:?}: nth must be a number from 1"))?;
        Ok(KillAt {
            point: point.to_string(),
            nth,
        })
    }

    /// The environment value that asks for this kill.
    pub fn env_value(&self) -> String {
        format!("{}:{}", self.point, self.nth)
    }

    /// The line the daemon writes just before the kill.
    pub fn report_line(&self) -> String {
        format!("{KILL_REPORT}{} hit {}", self.point, self.nth)
    }
}

/// What [`FAULT_ENV`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultAt {
    pub at: KillAt,
    /// `EIO` or `ENOSPC`.
    pub error: String,
}

impl FaultAt {
    /// Parses `<point>:<nth>:<EIO|ENOSPC>`.
    pub fn parse(text: &str) -> Result<FaultAt, String> {
        let (at, error) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{FAULT_ENV}={text:?}: expected <point>:<nth>:<EIO|ENOSPC>"))?;
        if error != "EIO" && error != "ENOSPC" {
            return Err(format!(
                "{FAULT_ENV}={text:?}: the error must be EIO or ENOSPC"
            ));
        }
        Ok(FaultAt {
            at: KillAt::parse(at)?,
            error: error.to_string(),
        })
    }

    pub fn env_value(&self) -> String {
        format!("{}:{}", self.at.env_value(), self.error)
    }

    /// The line the daemon writes when it injects the fault.
    pub fn report_line(&self) -> String {
        format!(
            "{FAULT_REPORT}{} at {} hit {}",
            self.error, self.at.point, self.at.nth
        )
    }
}

/// A hit counter of one point, counting once armed.
#[cfg(feature = "failpoints")]
struct Counter {
    nth: u64,
    arm: Option<std::path::PathBuf>,
    armed: std::sync::atomic::AtomicBool,
    hits: std::sync::atomic::AtomicU64,
}

#[cfg(feature = "failpoints")]
impl Counter {
    fn new(nth: u64, arm: Option<std::path::PathBuf>) -> Counter {
        Counter {
            nth,
            armed: std::sync::atomic::AtomicBool::new(arm.is_none()),
            arm,
            hits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Counts a hit; true at exactly the nth armed one.
    fn hit(&self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.armed.load(Ordering::Acquire) {
            // Not synchronisation: one stat per hit until the drill arms us.
            if self.arm.as_deref().is_some_and(|p| p.exists()) {
                self.armed.store(true, Ordering::Release);
            } else {
                return false;
            }
        }
        self.hits.fetch_add(1, Ordering::AcqRel) + 1 == self.nth
    }
}

#[cfg(feature = "failpoints")]
static FAULT: std::sync::OnceLock<(FaultAt, Counter)> = std::sync::OnceLock::new();

/// The `return` argument for `point` if [`FAULT_ENV`] fails it now (the
/// nth armed hit), after writing the report line. Called by `failpoint!`.
#[cfg(feature = "failpoints")]
pub fn injected_fault(point: &str) -> Option<Option<String>> {
    let (fault, counter) = FAULT.get()?;
    if fault.at.point != point || !counter.hit() {
        return None;
    }
    use std::io::Write;
    let line = format!("{}\n", fault.report_line());
    let _ = std::io::stderr().write_all(line.as_bytes());
    Some(Some(fault.error.clone()))
}

/// Configures the failpoints from the environment ([`KILL_ENV`],
/// [`ARM_ENV`], `FAILPOINTS`). Call once, first thing in `wconfd`. In a
/// build without failpoints, any of these variables is an error: a drill
/// that asks for a kill at a point must not silently run without it.
pub fn configure_from_env() -> Result<(), String> {
    let kill = std::env::var(KILL_ENV).ok();
    let fault = std::env::var(FAULT_ENV).ok();
    let actions = std::env::var("FAILPOINTS").ok();
    if !ENABLED {
        return match (kill, fault, actions) {
            (None, None, None) => Ok(()),
            _ => Err(format!(
                "{KILL_ENV}, {FAULT_ENV} or FAILPOINTS is set, but this wconfd was built \
                 without failpoints (build with --features failpoints)"
            )),
        };
    }
    #[cfg(feature = "failpoints")]
    {
        if let Some(actions) = actions {
            for entry in actions.split(';').map(str::trim).filter(|e| !e.is_empty()) {
                let (name, action) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("FAILPOINTS: {entry:?} is not <point>=<actions>"))?;
                if stage(name).is_none() {
                    return Err(format!("FAILPOINTS: unknown failpoint {name:?}"));
                }
                fail::cfg(name, action).map_err(|e| format!("FAILPOINTS {name}: {e}"))?;
            }
        }
        let arm = std::env::var_os(ARM_ENV).map(std::path::PathBuf::from);
        if let Some(fault) = fault {
            let fault = FaultAt::parse(&fault)?;
            let counter = Counter::new(fault.at.nth, arm.clone());
            let _ = FAULT.set((fault, counter));
        }
        if let Some(kill) = kill {
            arm_kill(KillAt::parse(&kill)?, arm)?;
        }
    }
    Ok(())
}

/// Registers the callback that raises SIGKILL at the nth hit of the point
/// (counting only hits once `arm` exists, if given). The report line goes
/// to stderr in one write before the raise, so whoever reaped the process
/// knows the point was reached and not some other death.
#[cfg(feature = "failpoints")]
fn arm_kill(kill: KillAt, arm: Option<std::path::PathBuf>) -> Result<(), String> {
    use std::io::Write;

    let counter = Counter::new(kill.nth, arm);
    let line = format!("{}\n", kill.report_line());
    fail::cfg_callback(kill.point.clone(), move || {
        if counter.hit() {
            let _ = std::io::stderr().write_all(line.as_bytes());
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_shaped_module_op_when() {
        // Invariant: every listed name is `module::op::when` and appears once.
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in POINTS {
            assert_eq!(name.split("::").count(), 3, "{name}");
            assert!(seen.insert(*name), "{name} listed twice");
        }
        assert!(POINTS.len() >= 30, "issue 6 asks for at least 30 points");
    }

    /// Every `failpoint!("...")` in `src/` but this file, with its file.
    fn placed() -> Vec<(String, String)> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![];
        walk(&src, &mut files);
        let mut found = vec![];
        for file in files.iter().filter(|f| !f.ends_with("failpoints.rs")) {
            let text = std::fs::read_to_string(file).unwrap();
            for (at, _) in text.match_indices("failpoint!(") {
                let rest = text[at + "failpoint!(".len()..].trim_start();
                let name = rest
                    .strip_prefix('"')
                    .and_then(|r| r.split_once('"'))
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_else(|| {
                        panic!("{}: a failpoint! without a literal name", file.display())
                    });
                found.push((name, file.display().to_string()));
            }
        }
        found
    }

    #[test]
    fn every_listed_point_is_placed_once_and_every_placed_point_is_listed() {
        // Invariant: POINTS and the `failpoint!` calls in the sources are
        // the same set, each name placed exactly once, so a drill that
        // iterates POINTS reaches every point in the code.
        let found = placed();
        for (name, file) in &found {
            assert!(
                stage(name).is_some(),
                "{file} places {name}, which POINTS does not list"
            );
        }
        for (name, _) in POINTS {
            let n = found.iter().filter(|(f, _)| f == name).count();
            assert_eq!(n, 1, "{name} is placed {n} times");
        }
    }

    #[test]
    fn kill_requests_parse_only_for_listed_points() {
        // Invariant: `<point>:<nth>` parses for a listed point and nth >= 1,
        // and round-trips through `env_value`; anything else is refused.
        let k = KillAt::parse("wal::write::before:3").unwrap();
        assert_eq!((k.point.as_str(), k.nth), ("wal::write::before", 3));
        assert_eq!(KillAt::parse(&k.env_value()).unwrap(), k);
        assert!(KillAt::parse("wal::write::before:0").is_err());
        assert!(KillAt::parse("wal::write::before").is_err());
        assert!(KillAt::parse("no::such::point:1").is_err());
    }
}
