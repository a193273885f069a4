//! The config actor: serves `GET /v1/config*` from its own copy of the
//! document, so large reads never hold up the lock actor's decisions.
//!
//! The lock actor publishes its `ConfigState` on a `watch` channel at the end
//! of every step that changed the document: an O(1) clone of a shared tree,
//! so the patch is not applied a second time here and the two copies cannot
//! diverge. Publishing is a store, not a message, so the lock actor never
//! waits behind queued reads. A read takes the latest published state and
//! answers only once the LSN of the last change it shows is durable (G4), so
//! it never shows a change a crash could take back.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::watch;

use super::{durable_wait_failed, Reply, CONFIG_MAILBOX_MAX};
use crate::api::error::ApiError;
use crate::state::doc::Node;
use crate::state::ConfigState;
use crate::wal::Wal;

pub struct ConfigActor {
    /// The document as the lock actor last published it; knows the LSN of
    /// the record that last changed it (`lsn()`), which reads report and
    /// wait on.
    config: watch::Receiver<ConfigState>,
    wal: Arc<Wal>,
}

impl ConfigActor {
    /// `durable_lsn`: an LSN already durable at start (the new epoch's).
    /// Replay restored the document with the LSN of its last change, which
    /// can only be at or before that.
    pub fn new(
        config: watch::Receiver<ConfigState>,
        durable_lsn: u64,
        wal: Arc<Wal>,
    ) -> ConfigActor {
        let lsn = config.borrow().lsn();
        assert!(
            lsn <= durable_lsn,
            "the config changed at LSN {lsn} after the durable LSN {durable_lsn}",
        );
        ConfigActor { config, wal }
    }
}

impl Actor for ConfigActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(CONFIG_MAILBOX_MAX);
    }
}

/// A read of the whole document (`pointer: None`) or of one value. The
/// answer is the JSON response body.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GetConfig {
    pub pointer: Option<String>,
    pub reply: Reply<Vec<u8>>,
}

super::mailbox::countable!(ConfigActor: GetConfig);

#[derive(Serialize)]
struct WholeRef<'a> {
    serial: u64,
    lsn: u64,
    config: &'a Node,
}

#[derive(Serialize)]
struct ValueRef<'a> {
    serial: u64,
    value: &'a Node,
}

impl Handler<GetConfig> for ConfigActor {
    type Result = ();

    fn handle(&mut self, msg: GetConfig, _ctx: &mut Self::Context) {
        // O(1), and lets go of the channel before the (maybe long) encoding.
        let config = self.config.borrow().clone();
        let serial = config.serial();
        let internal = |e: serde_json::Error| ApiError::new(500, "internal", e.to_string());
        // A missing value is an answer about the document too, so it waits
        // for durability like any other.
        let body = match &msg.pointer {
            None => serde_json::to_vec(&WholeRef {
                serial,
                lsn: config.lsn(),
                config: config.doc(),
            })
            .map_err(internal),
            Some(p) => match config.get(p) {
                Some(value) => serde_json::to_vec(&ValueRef { serial, value }).map_err(internal),
                None => Err(ApiError::not_found(format!("no config value at {p:?}"))),
            },
        };
        let wait = self.wal.wait_durable(config.lsn());
        actix::spawn(async move {
            let gate = wait.await.map(drop).map_err(durable_wait_failed);
            let _ = msg.reply.send(gate.and(body));
        });
    }
}
