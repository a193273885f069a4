//! `wal-dump follow`: prints records as they become durable, like `tail -f`.
//!
//! Every `POLL_INTERVAL_MS` it re-maps the segment it is in (the file is
//! preallocated, so its length says nothing; a fresh map sees what the
//! writer appended) and prints the frames up to the end of the last
//! complete group-commit batch: the batch being written is never shown.
//! When the frames end and the segment named for the next LSN exists, the
//! writer has rolled: it moves on. Bytes that do not read as a frame yet
//! are a write in flight; it waits for them. SIGINT ends it with exit 0.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wconf::wal::format::{read_frame, FrameRead, SEGMENT_HEADER_LEN};
use wconf::wal::reader::{list_segments, segment_header, Record, SegmentFile};
use wconf::wal::segment::segment_name;
use wconf::wal::storage::{StdStorage, Storage};

use crate::decode::decode;
use crate::exit;
use crate::list::{print_record, Options};
use crate::log::{fatal_wal, Fatal, Located};

pub const POLL_INTERVAL_MS: u64 = 100;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_sigint() -> Result<(), Fatal> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_sigint),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGINT, &action) }
        .map(|_| ())
        .map_err(|e| Fatal::usage(format!("cannot handle SIGINT: {e}")))
}

pub fn run(dir: &Path, from: Option<u64>, opts: &Options) -> Result<u8, Fatal> {
    if !dir.is_dir() {
        return Err(Fatal::usage(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    install_sigint()?;
    let segments = list_segments(&StdStorage, dir).map_err(fatal_wal)?;
    // Start in the last segment whose first LSN is at or below --from.
    let start = match from {
        Some(f) => segments.iter().rev().find(|s| s.name_lsn <= f),
        None => segments.first(),
    }
    .or(segments.first());
    let mut cur: Option<PathBuf> = start.map(|s| s.path.clone());
    let mut next_lsn = start.map_or(from.unwrap_or(1), |s| s.name_lsn);
    drop(segments);
    let mut off = SEGMENT_HEADER_LEN;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while !INTERRUPTED.load(Ordering::SeqCst) {
        let path = match &cur {
            Some(p) => p.clone(),
            None => {
                // An empty directory: wait for the first segment.
                let first = dir.join(segment_name(next_lsn));
                if first.exists() {
                    cur = Some(first);
                    continue;
                }
                std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
                continue;
            }
        };
        let view = StdStorage
            .read(&path)
            .map_err(|e| Fatal::usage(format!("{}: {e}", path.display())))?;
        let file = SegmentFile {
            path: path.clone(),
            name_lsn: next_lsn,
            view,
        };
        if off == SEGMENT_HEADER_LEN {
            segment_header(&file).map_err(|(damage, e)| match e {
                Some(e) => fatal_wal(e),
                None => Fatal {
                    code: exit::CORRUPT,
                    message: format!("{}: {damage}", path.display()),
                },
            })?;
        }
        let (end, batches) = complete_batches(&file.view, off, next_lsn);
        next_lsn += batches.len() as u64;
        for record in batches {
            if from.is_some_and(|f| record.lsn < f) {
                continue;
            }
            let located = Located {
                segment: &file,
                record,
            };
            let d = decode(record.lsn, record.kind, record.payload);
            if print_record(&mut out, &located, &d, opts).is_err() {
                return Ok(exit::CLEAN);
            }
        }
        if out.flush().is_err() {
            return Ok(exit::CLEAN);
        }
        let advanced = end != off;
        off = end;
        if !advanced {
            let next = dir.join(segment_name(next_lsn));
            if next != path && next.exists() {
                cur = Some(next);
                off = SEGMENT_HEADER_LEN;
                continue;
            }
            drop(file);
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }
    Ok(exit::CLEAN)
}

/// The records of the complete batches from `off` on, and the offset after
/// the last of them. A frame that does not read, or a batch without its
/// end, stops the walk: it is still being written.
fn complete_batches(buf: &[u8], off: usize, first_lsn: u64) -> (usize, Vec<Record<'_>>) {
    let mut records = vec![];
    let mut pending = vec![];
    let mut end = off;
    let mut at = off;
    let mut lsn = first_lsn;
    while let FrameRead::Frame { header, payload } = read_frame(buf, at) {
        if header.lsn != lsn {
            break;
        }
        pending.push(Record {
            lsn,
            kind: header.kind,
            payload,
            offset: at as u64,
            header,
        });
        lsn += 1;
        at += header.padded_len();
        if header.is_batch_end() {
            records.append(&mut pending);
            end = at;
        }
    }
    (end, records)
}
