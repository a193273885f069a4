//! `wal-dump repair`: cuts a torn tail (or, when asked with `--truncate-at`,
//! a damaged log before an LSN) through the daemon's own cut
//! (`wconf::wal::recovery`), under the directory's `LOCK`. A dry run unless
//! `--apply`. It only ever drops bytes into `.broken` side files; it never
//! recomputes a CRC.

use std::path::Path;

use wconf::wal::lockfile::DirLock;
use wconf::wal::recovery::{repair_torn_tail, truncate_before};
use wconf::wal::storage::StdStorage;
use wconf::wal::{DamageClass, Truncation, WalError};

use crate::exit;
use crate::log::Fatal;

pub fn run(dir: &Path, apply: bool, truncate_at: Option<u64>) -> Result<u8, Fatal> {
    if !dir.is_dir() {
        return Err(Fatal::usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    // Held until the cut is durable: no daemon may open the log meanwhile,
    // and none may be running now. A dry run reads only, like `verify`.
    let _lock = if apply {
        Some(DirLock::acquire(dir).map_err(|e| Fatal::usage(format!("cannot repair: {e}")))?)
    } else {
        None
    };
    let result = match truncate_at {
        None => repair_torn_tail(&StdStorage, dir, !apply),
        Some(lsn) => truncate_before(&StdStorage, dir, lsn, !apply).map(Some),
    };
    let t = match result {
        Ok(None) => {
            println!("clean: nothing to repair");
            return Ok(exit::CLEAN);
        }
        Ok(Some(t)) => t,
        Err(WalError::Corrupted {
            segment,
            offset,
            lsn,
            kind,
        }) => {
            let (code, what) = if kind.class() == DamageClass::Sequence {
                (exit::SEQUENCE, "segment sequence broken")
            } else {
                (exit::CORRUPT, "corrupt")
            };
            println!(
                "{what}: {} at offset {offset} (LSN {lsn}): {kind}",
                segment.display()
            );
            println!(
                "refusing: this is not a torn tail, and the daemon would refuse it too; \
                 `--truncate-at LSN` cuts the log before LSN (records from LSN on are set aside)"
            );
            return Ok(code);
        }
        Err(e @ WalError::UnsupportedVersion { .. }) => {
            return Err(Fatal {
                code: exit::CORRUPT,
                message: e.to_string(),
            })
        }
        Err(WalError::InvalidOptions(m)) => return Err(Fatal::usage(m)),
        Err(e) => return Err(Fatal::usage(e.to_string())),
    };
    print_truncation(&t, apply);
    Ok(if apply { exit::CLEAN } else { exit::TORN_TAIL })
}

fn print_truncation(t: &Truncation, applied: bool) {
    let verb = if applied { "cut" } else { "would cut" };
    let lsns = match t.last_lsn_dropped {
        Some(last) if last >= t.first_lsn_dropped => {
            format!("LSN {}..={last}", t.first_lsn_dropped)
        }
        _ => format!("from LSN {} (no readable record)", t.first_lsn_dropped),
    };
    println!(
        "damage: {} at offset {}: {}",
        t.segment.display(),
        t.damage_offset,
        t.damage
    );
    println!(
        "{verb}: {} at offset {}, dropping {lsns}, {} bytes",
        t.segment.display(),
        t.cut_offset,
        t.bytes_dropped
    );
    for f in &t.broken_files {
        let kept = if applied { "kept in" } else { "would keep in" };
        println!("{kept}: {}", f.display());
    }
    if applied {
        println!("done: side files and directory fsynced, segment cut and fsynced");
    } else {
        println!("dry run: nothing changed; run again with --apply to cut");
    }
}
