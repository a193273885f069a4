//! The WAL-writer actor: appends a step's records for the lock actor when
//! the log's queue has no room for all of them, waiting for room on its own
//! arbiter so the lock actor's thread never blocks. (With room, the lock
//! actor appends them itself.) The log's own writer thread does the writes
//! and fsyncs, so no actix thread ever waits for the disk.

use std::sync::Arc;

use actix::prelude::*;

use super::WAL_MAILBOX_MAX;
use crate::wal::{Appended, Wal, WalError};

pub struct WalActor {
    wal: Arc<Wal>,
}

impl WalActor {
    pub fn new(wal: Arc<Wal>) -> WalActor {
        WalActor { wal }
    }
}

impl Actor for WalActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(WAL_MAILBOX_MAX);
    }
}

/// Records already applied in memory, in LSN order, as `(kind, payload)`.
/// The answer holds one `Appended` per record; each resolves when durable.
#[derive(Message)]
#[rtype(result = "Result<Vec<Appended>, WalError>")]
pub struct Append {
    pub frames: Vec<(u16, Vec<u8>)>,
}

impl Handler<Append> for WalActor {
    type Result = Result<Vec<Appended>, WalError>;

    /// The lock actor checked that the queue had room for the first record
    /// before applying it (that is where a full queue becomes a 503). Records
    /// decided after it (grants to waiters) are already applied and must be
    /// logged, so this waits for queue space, which the writer frees as it
    /// syncs; it never waits for a sync itself.
    fn handle(&mut self, msg: Append, _ctx: &mut Self::Context) -> Self::Result {
        self.wal.append_all(msg.frames)
    }
}
