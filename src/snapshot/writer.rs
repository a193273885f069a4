//! The snapshot writer thread: takes a copy of the state that the sequencer
//! handed over, waits until its LSN is durable in the log (the sequencer
//! applies records before their fsync, so its state is ahead of the disk),
//! writes the snapshot file, and then collects old snapshots and segments.
//! One job at a time: the channel holds one job, and the sequencer submits
//! the next only after the previous one answered.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{collect, write, Collected, SnapshotError, Written};
use crate::failpoints::failpoint;
use crate::state::State;
use crate::wal::Wal;

/// How much the snapshot writer's nice value is above the daemon's.
/// Encoding a large document takes a core for a second or more; requests
/// must not queue behind it on a machine with few cores. 10 above leaves the
/// thread about a tenth of a core that request threads also want (CFS
/// weights 110 against 1024) and all of any core they leave idle, so a
/// snapshot always finishes.
pub const SNAPSHOT_NICE_INCREMENT: i32 = 10;

/// What a finished snapshot reports.
#[derive(Debug, Clone)]
pub struct Done {
    pub written: Written,
    /// Waiting for the snapshot's LSN to become durable in the log.
    pub durable_wait: Duration,
    /// From the job's submission to the snapshot being durable.
    pub total: Duration,
    pub collected: Collected,
    /// Collection failed after the snapshot was durable: the snapshot
    /// stands, the old files stay until the next collection.
    pub collect_error: Option<String>,
}

/// One snapshot to write: the state (a copy taken at one LSN) and where to
/// send the outcome.
pub struct Job {
    pub state: State,
    pub done: Box<dyn FnOnce(Result<Done, SnapshotError>) + Send>,
}

/// Handle to the writer thread. Dropping it lets the thread finish the job
/// in hand and joins it.
pub struct SnapshotWriter {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl SnapshotWriter {
    /// Starts the thread for the log `wal`: snapshots go to the log's own
    /// directory on the log's own storage.
    pub fn start(wal: Arc<Wal>) -> std::io::Result<SnapshotWriter> {
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let thread = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                lower_priority(SNAPSHOT_NICE_INCREMENT);
                for job in rx {
                    let lsn = job.state.applied_lsn();
                    let result = run(&wal, job.state);
                    if let Err(e) = &result {
                        tracing::error!(lsn, error = %e, "snapshot failed");
                    }
                    (job.done)(result);
                }
            })?;
        Ok(SnapshotWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands a job to the thread without blocking. `Busy` when a job is
    /// already waiting (the caller should keep one in flight), `Stopped`
    /// when the thread is gone; the job is dropped then.
    pub fn submit(&self, job: Job) -> Result<(), SnapshotError> {
        let tx = self.tx.as_ref().ok_or(SnapshotError::Stopped)?;
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SnapshotError::Busy,
            TrySendError::Disconnected(_) => SnapshotError::Stopped,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Raises this thread's nice value by `increment` (the kernel caps it at
/// 19). On Linux nice(2) changes the calling thread alone. Failing leaves
/// the thread at the daemon's priority, which costs request latency, not
/// correctness.
fn lower_priority(increment: i32) {
    nix::errno::Errno::clear();
    // SAFETY: a plain system call; no memory is passed.
    let rc = unsafe { nix::libc::nice(increment) };
    // -1 is also a valid nice value: only errno tells a failure.
    if rc == -1 && nix::errno::Errno::last_raw() != 0 {
        tracing::warn!(
            increment,
            error = %std::io::Error::last_os_error(),
            "could not lower the snapshot writer's priority"
        );
    }
}

fn run(wal: &Wal, state: State) -> Result<Done, SnapshotError> {
    let started = Instant::now();
    let lsn = state.applied_lsn();
    failpoint!("snapshot::handoff::received");
    futures_executor::block_on(wal.wait_durable(lsn)).map_err(SnapshotError::Wal)?;
    failpoint!("snapshot::handoff::durable");
    let durable_wait = started.elapsed();
    let storage = wal.storage();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let written = write(storage.as_ref(), wal.dir(), &state, now_ms)?;
    let total = started.elapsed();
    // The copy is freed here, on this thread, not on the sequencer's.
    drop(state);
    let (collected, collect_error) = match collect(storage.as_ref(), wal.dir()) {
        Ok(c) => (c, None),
        Err(e) => {
            tracing::warn!(error = %e, "collecting old snapshots and segments failed");
            (Collected::default(), Some(e.to_string()))
        }
    };
    tracing::info!(
        lsn,
        path = %written.path.display(),
        bytes = written.bytes,
        durable_wait_ms = durable_wait.as_millis() as u64,
        encode_ms = written.encode.as_millis() as u64,
        write_ms = written.write.as_millis() as u64,
        segments_removed = collected.segments.len(),
        snapshots_removed = collected.snapshots.len(),
        "snapshot written"
    );
    Ok(Done {
        written,
        durable_wait,
        total,
        collected,
        collect_error,
    })
}
