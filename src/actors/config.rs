//! The config actor: serves `GET /v1/config*` from its own copy of the
//! document, so large reads never hold up the lock actor's decisions.
//!
//! The copy changes only by [`Publish`], which the lock actor sends for each
//! config record it applied, in LSN order, before it takes its next message.
//! It carries the lock actor's `ConfigState` as of that record: an O(1)
//! clone of a shared tree, so the patch is not applied a second time here
//! and the two copies cannot diverge. A read answers only once the LSN of
//! the last change it shows is durable (G4), so it never shows a change a
//! crash could take back.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use super::{durable_wait_failed, Reply, CONFIG_MAILBOX_MAX};
use crate::api::error::ApiError;
use crate::state::doc::Node;
use crate::state::ConfigState;
use crate::wal::Wal;

pub struct ConfigActor {
    /// Knows the LSN of the record that last changed it (`lsn()`), which
    /// reads report and wait on.
    config: ConfigState,
    wal: Arc<Wal>,
}

impl ConfigActor {
    /// `durable_lsn`: an LSN already durable at start (the new epoch's).
    /// Replay restored the document with the LSN of its last change, which
    /// can only be at or before that.
    pub fn new(config: ConfigState, durable_lsn: u64, wal: Arc<Wal>) -> ConfigActor {
        assert!(
            config.lsn() <= durable_lsn,
            "the config changed at LSN {} after the durable LSN {durable_lsn}",
            config.lsn()
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

/// The document as the lock actor left it after applying the config record
/// at `config.lsn()`. Not yet durable: reads wait for that LSN.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    pub config: ConfigState,
}

super::mailbox::countable!(ConfigActor: Publish);

impl Handler<Publish> for ConfigActor {
    type Result = ();

    fn handle(&mut self, msg: Publish, _ctx: &mut Self::Context) {
        assert!(
            msg.config.lsn() > self.config.lsn(),
            "config records out of LSN order"
        );
        self.config = msg.config;
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
        let serial = self.config.serial();
        let internal = |e: serde_json::Error| ApiError::new(500, "internal", e.to_string());
        // A missing value is an answer about the document too, so it waits
        // for durability like any other.
        let body = match &msg.pointer {
            None => serde_json::to_vec(&WholeRef {
                serial,
                lsn: self.config.lsn(),
                config: self.config.doc(),
            })
            .map_err(internal),
            Some(p) => match self.config.get(p) {
                Some(value) => serde_json::to_vec(&ValueRef { serial, value }).map_err(internal),
                None => Err(ApiError::not_found(format!("no config value at {p:?}"))),
            },
        };
        let wait = self.wal.wait_durable(self.config.lsn());
        actix::spawn(async move {
            let gate = wait.await.map(drop).map_err(durable_wait_failed);
            let _ = msg.reply.send(gate.and(body));
        });
    }
}
