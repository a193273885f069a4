//! The daemon's actors: thin shells around the pure state machines.
//!
//! - `lock::LockActor` sequences every change: it owns [`crate::state::State`],
//!   decides, applies in LSN order and queues each step's records in the log.
//! - `config::ConfigActor` serves config reads from the document the lock
//!   actor publishes on a `watch` channel, streaming the large ones from
//!   `stream::Encoders`.
//! - `wal::WalActor` appends a step's records for the lock actor when the
//!   log's queue is full, waiting for room on its own arbiter.
//!
//! Every request message carries its own reply channel, so the HTTP layer
//! can `try_send` (a full mailbox is a 503, never an unbounded queue) and an
//! actor can answer later: after the record is durable, or after a wait.
//! See ARCHITECTURE.md, "Daemon".

pub mod config;
pub mod lock;
pub mod mailbox;
pub mod stream;
pub mod wal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::api::error::ApiError;
use crate::wal::WalError;

/// Where an actor sends its answer.
pub type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

/// Mailbox bounds. The HTTP layer `try_send`s, so a full mailbox is a 503.
pub const LOCK_MAILBOX_MAX: usize = 4_096;
pub const CONFIG_MAILBOX_MAX: usize = 4_096;
/// Only the lock actor sends here, one message at a time.
pub const WAL_MAILBOX_MAX: usize = 16;

/// Exit code after a write or sync error (G7).
pub const EXIT_FAIL_STOP: i32 = 3;

/// Set once a server runs inside a host process (`server::start_in_process`):
/// a fail-stop then halts the failing actor thread instead of exiting the
/// host. `wconfd` never sets it.
static HALT_ON_FAIL_STOP: AtomicBool = AtomicBool::new(false);
/// The error of the last fail-stop that halted a thread.
static LAST_FAIL_STOP: Mutex<Option<String>> = Mutex::new(None);

/// Fail-stop (G7): after the log failed, memory is ahead of the disk, and
/// nothing may be acknowledged again. Logs and exits at once; no response
/// still waiting is ever sent.
///
/// In a server started in-process, the calling thread (the arbiter of the
/// lock and config actors) halts for good instead: those actors never run
/// again, so nothing is answered again either, and the host survives.
pub fn fail_stop(err: &dyn std::fmt::Display) -> ! {
    tracing::error!(error = %err, "write-ahead log failed; stopping (fail-stop)");
    if HALT_ON_FAIL_STOP.load(Ordering::SeqCst) {
        *LAST_FAIL_STOP.lock().unwrap_or_else(|e| e.into_inner()) = Some(err.to_string());
        loop {
            std::thread::park();
        }
    }
    eprintln!("wconfd: fail-stop: {err}");
    std::process::exit(EXIT_FAIL_STOP)
}

/// Makes [`fail_stop`] halt the calling thread rather than exit the process.
pub(crate) fn fail_stop_halts_thread() {
    HALT_ON_FAIL_STOP.store(true, Ordering::SeqCst);
}

/// The error of the last fail-stop that halted a thread in this process.
pub(crate) fn last_fail_stop() -> Option<String> {
    LAST_FAIL_STOP
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// What to answer when waiting for durability did not succeed: a poisoned
/// log stops the daemon; a full waiter list or a closing log refuses.
pub(crate) fn durable_wait_failed(err: WalError) -> ApiError {
    match err {
        WalError::Poisoned { .. } => fail_stop(&err),
        other => ApiError::from(other),
    }
}
