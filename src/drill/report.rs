//! The drill's report: counts, recovery times, every invariant with pass or
//! fail, and for each violation the history and log range that show it and
//! the command that reruns the drill. Rendered for a person or as JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::check::{Invariant, Violation};
use super::history::{History, OpKind, Outcome};
use super::{DrillOptions, Tally};

/// Ops of the same client shown before and after each op a violation names.
const CONTEXT_OPS: usize = 2;
/// Ops shown per violation, at most.
const EXCERPT_OPS_MAX: usize = 24;
/// Violations detailed in the report (all are counted).
const VIOLATIONS_SHOWN_MAX: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when no invariant was violated.
    pub passed: bool,
    pub seed: u64,
    /// The command that runs this drill again (same seed, same options).
    pub reproduce: String,
    pub data_dir: String,
    /// The data directory is left for inspection (a failed scratch drill,
    /// or one the user named).
    pub data_dir_kept: bool,
    pub clients: usize,
    /// SIGKILLs of a serving daemon.
    pub kills: usize,
    /// Extra SIGKILLs of a daemon still recovering (idempotent recovery).
    pub kills_during_recovery: usize,
    pub pauses: usize,
    pub requests: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub unknown: usize,
    /// The last LSN recovered by the last restart.
    pub recovered_lsn: u64,
    pub torn_tails_repaired: usize,
    /// `.broken` side files in the data directory.
    pub broken_files: usize,
    pub recovery_ms_p50: u64,
    pub recovery_ms_max: u64,
    pub liveness_bound_ms: u64,
    pub invariants: Vec<InvariantResult>,
    pub violations: Vec<ViolationReport>,
    /// Why the drill stopped before its last kill, if it did.
    pub aborted: Option<String>,
    /// Storage faults injected (`--storage-faults`), each followed by the
    /// daemon's fail-stop and a restart.
    pub storage_faults: usize,
    /// SIGKILLs at each named failpoint (a failpoint drill only).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failpoint_kills: std::collections::BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    pub number: u8,
    pub name: String,
    pub passed: bool,
    pub violations: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ViolationReport {
    pub invariant: u8,
    pub name: String,
    pub run: u32,
    pub message: String,
    /// The ops that show it, with their neighbours from the same clients.
    pub history: Vec<String>,
    /// LSNs to look at with `wal-dump list`.
    pub log_range: Option<[u64; 2]>,
    pub log_command: Option<String>,
    /// What the daemon logged (warnings and errors) in that run.
    pub daemon_log: Vec<String>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn reproduce(opts: &DrillOptions, seed: u64) -> String {
    let mut cmd = format!(
        "wconfctl drill --seed {seed} --clients {} --kills {} --liveness-bound-ms {} --kill-delay-max-ms {}",
        opts.clients, opts.kills, opts.liveness_bound_ms, opts.kill_delay_max_ms
    );
    if opts.pause {
        cmd.push_str(" --pause");
    }
    if opts.storage_faults {
        cmd.push_str(" --storage-faults");
    }
    for a in &opts.wconfd_args {
        let _ = write!(cmd, " --wconfd-arg={a}");
    }
    cmd
}

fn excerpt(history: &History, v: &Violation) -> Vec<String> {
    let mut ids: Vec<usize> = vec![];
    for &id in &v.ops {
        let client = history.ops[id].client;
        let mine: Vec<usize> = history
            .ops
            .iter()
            .filter(|o| o.client == client)
            .map(|o| o.id)
            .collect();
        let at = mine.partition_point(|o| *o < id);
        let from = at.saturating_sub(CONTEXT_OPS);
        let to = (at + CONTEXT_OPS + 1).min(mine.len());
        ids.extend(&mine[from..to]);
    }
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(EXCERPT_OPS_MAX);
    ids.iter()
        .map(|&id| {
            let mark = if v.ops.contains(&id) { "> " } else { "  " };
            format!("{mark}{}", history.ops[id].describe())
        })
        .collect()
}

pub(super) fn build(
    opts: &DrillOptions,
    seed: u64,
    dir: &Path,
    scratch: bool,
    history: &History,
    tally: Tally,
) -> Report {
    let requests: Vec<_> = history
        .ops
        .iter()
        .filter(|o| !matches!(o.kind, OpKind::Abandon | OpKind::Pause { .. }))
        .collect();
    let count = |f: fn(&Outcome) -> bool| requests.iter().filter(|o| f(&o.outcome)).count();
    let mut rec: Vec<u64> = tally.recoveries_ms.iter().map(|r| r.1).collect();
    rec.sort_unstable();
    let invariants = Invariant::ALL
        .iter()
        .map(|i| {
            let n = tally
                .violations
                .iter()
                .filter(|v| v.invariant == *i)
                .count();
            InvariantResult {
                number: i.number(),
                name: i.title().to_string(),
                passed: n == 0,
                violations: n,
            }
        })
        .collect();
    let dir_text = dir.display().to_string();
    let violations = tally
        .violations
        .iter()
        .take(VIOLATIONS_SHOWN_MAX)
        .map(|v| {
            let lsns: Vec<u64> = v
                .ops
                .iter()
                .filter_map(|&id| history.ops[id].lsn())
                .collect();
            let log_range = match (lsns.iter().min(), lsns.iter().max()) {
                (Some(a), Some(b)) => Some([a.saturating_sub(5).max(1), b + 5]),
                _ if tally.last_recovered_lsn > 0 => Some([
                    tally.last_recovered_lsn.saturating_sub(10).max(1),
                    tally.last_recovered_lsn + 1,
                ]),
                _ => None,
            };
            ViolationReport {
                invariant: v.invariant.number(),
                name: v.invariant.title().to_string(),
                run: v.run,
                message: v.message.clone(),
                history: excerpt(history, v),
                log_command: log_range
                    .map(|[a, b]| format!("wal-dump list {dir_text} --from {a} --to {b}")),
                log_range,
                daemon_log: tally
                    .stderr
                    .get(v.run as usize)
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect();
    let passed = tally.violations.is_empty();
    Report {
        passed,
        seed,
        reproduce: reproduce(opts, seed),
        data_dir: dir_text,
        data_dir_kept: !scratch || !passed,
        clients: opts.clients,
        kills: tally.kills,
        kills_during_recovery: tally.recovery_kills,
        pauses: tally.pauses,
        requests: requests.len(),
        acknowledged: count(|o| matches!(o, Outcome::Ok { .. })),
        refused: count(Outcome::is_refused),
        unknown: count(Outcome::is_unknown),
        recovered_lsn: tally.last_recovered_lsn,
        torn_tails_repaired: tally.torn_tails,
        broken_files: super::daemon::broken_files(dir),
        recovery_ms_p50: percentile(&rec, 0.5),
        recovery_ms_max: rec.last().copied().unwrap_or(0),
        liveness_bound_ms: opts.liveness_bound_ms,
        invariants,
        violations,
        aborted: tally.aborted,
        failpoint_kills: tally.point_kills,
        storage_faults: tally.faults,
    }
}

impl Report {
    /// The report for a person: aligned `key: value` lines, the invariant
    /// table, then each violation in detail.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let lines = [
            ("seed", self.seed.to_string()),
            ("clients", self.clients.to_string()),
            (
                "kills",
                format!(
                    "{} (+{} during recovery, {} pauses)",
                    self.kills, self.kills_during_recovery, self.pauses
                ),
            ),
            (
                "requests",
                format!(
                    "{} ({} acknowledged, {} refused, {} unknown)",
                    self.requests, self.acknowledged, self.refused, self.unknown
                ),
            ),
            ("recovered lsn", self.recovered_lsn.to_string()),
            (
                "torn tails repaired",
                format!(
                    "{} ({} .broken files)",
                    self.torn_tails_repaired, self.broken_files
                ),
            ),
            (
                "recovery time",
                format!(
                    "p50 {} ms, max {} ms (bound {} ms)",
                    self.recovery_ms_p50, self.recovery_ms_max, self.liveness_bound_ms
                ),
            ),
            (
                "data dir",
                format!(
                    "{}{}",
                    self.data_dir,
                    if self.data_dir_kept { "" } else { " (removed)" }
                ),
            ),
        ];
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
        for (k, v) in lines {
            let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
        }
        if let Some(why) = &self.aborted {
            let _ = writeln!(out, "{:<width$} {why}", "aborted:");
        }
        if self.storage_faults > 0 {
            let _ = writeln!(
                out,
                "{:<width$} {} injected (EIO/ENOSPC), each a fail-stop and a restart",
                "storage faults:", self.storage_faults
            );
        }
        if !self.failpoint_kills.is_empty() {
            let total: usize = self.failpoint_kills.values().sum();
            let points = self.failpoint_kills.len();
            let _ = writeln!(
                out,
                "{:<width$} {total} at {points} points",
                "failpoint kills:"
            );
        }
        out.push_str("invariants:\n");
        let name_width = self
            .invariants
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0);
        for i in &self.invariants {
            let verdict = if i.passed {
                "pass".to_string()
            } else {
                format!("FAIL ({} violation(s))", i.violations)
            };
            let _ = writeln!(out, "  {} {:<name_width$}  {verdict}", i.number, i.name);
        }
        for v in &self.violations {
            let _ = writeln!(
                out,
                "\nviolation of {} {} (after restart {}): {}",
                v.invariant, v.name, v.run, v.message
            );
            if !v.history.is_empty() {
                out.push_str("  history (> marks the ops that show it):\n");
                for h in &v.history {
                    let _ = writeln!(out, "    {h}");
                }
            }
            if let Some(cmd) = &v.log_command {
                let _ = writeln!(out, "  log: {cmd}");
            }
            for l in &v.daemon_log {
                let _ = writeln!(out, "  wconfd: {l}");
            }
        }
        let _ = writeln!(out, "result: {}", if self.passed { "PASS" } else { "FAIL" });
        if !self.passed {
            let _ = writeln!(out, "reproduce: {}", self.reproduce);
        }
        out
    }
}
