//! The config actor: serves `GET /v1/config` and large values from its own
//! copy of the document, so large reads never hold up the lock actor's
//! decisions or an HTTP worker; [`ConfigReader`] serves small values from
//! the same copy on the HTTP worker itself.
//!
//! The lock actor publishes its `ConfigState` on a `watch` channel
//! ([`Published`]) once the records of a step that changed the document are
//! durable: an O(1) clone of a shared tree, so the patch is not applied a
//! second time here and the two copies cannot diverge. Publishing is a
//! store, not a message, so the lock actor never waits behind queued reads.
//! A read takes the latest published state, which is durable already, so it
//! never shows a change a crash could take back (G4) and never waits for a
//! sync; it still checks the state's LSN against the log before answering.
//!
//! The actor itself only takes the document and checks its durability: the
//! bodies it answers with are encoded by [`Encoders`] on blocking threads,
//! a few at a time, and streamed in chunks, so neither this thread nor
//! memory grows with the number or the speed of the readers.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::watch;

use super::stream::{Body, Encoders};
use super::{durable_wait_failed, Reply, CONFIG_MAILBOX_MAX};
use crate::api::error::ApiError;
use crate::state::doc::Node;
use crate::state::ConfigState;
use crate::wal::Wal;

/// The sending side of the readers' document: the lock actor shows each
/// step's document to readers once its records are durable, from whichever
/// thread learns that first (the log writer's, after the sync, or the lock
/// actor's when it already was).
#[derive(Clone)]
pub struct Published(Arc<watch::Sender<ConfigState>>);

impl Published {
    /// `durable`: the document as recovered, durable by definition.
    pub fn new(durable: ConfigState) -> (Published, watch::Receiver<ConfigState>) {
        let (tx, rx) = watch::channel(durable);
        (Published(Arc::new(tx)), rx)
    }

    /// Shows `config`, whose last change is durable, to readers, unless a
    /// later document is shown already: two steps made durable by one sync
    /// may be shown from two threads, in either order.
    pub fn show(&self, config: ConfigState) {
        let mut newer = Some(config);
        let mut replaced = None;
        self.0.send_if_modified(|shown| {
            let Some(config) = newer.take_if(|c| c.lsn() > shown.lsn()) else {
                return false;
            };
            replaced = Some(std::mem::replace(shown, config));
            true
        });
        // Dropped here, not under the channel's lock that readers take: the
        // nodes only the old document held are freed now.
        drop(replaced);
    }
}

pub struct ConfigActor {
    /// The document as the lock actor last published it, durable; knows
    /// the LSN of the record that last changed it (`lsn()`), which reads
    /// report and check.
    config: watch::Receiver<ConfigState>,
    wal: Arc<Wal>,
    /// Encode the bodies, off this thread, a few at a time.
    encoders: Encoders,
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
        ConfigActor {
            config,
            wal,
            encoders: Encoders::default(),
        }
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
    pub reply: Reply<Body>,
}

super::mailbox::countable!(ConfigActor: GetConfig);

/// The body of a read of the whole document. Owned, so an encoder thread
/// can take it: cloning the document is O(1).
#[derive(Serialize)]
struct Whole {
    serial: u64,
    lsn: u64,
    config: Node,
}

/// The body of a read of one value: `N` is `&Node` where it is encoded at
/// once, `Node` (an O(1) clone) where an encoder thread takes it.
#[derive(Serialize)]
struct ValueBody<N> {
    serial: u64,
    value: N,
}

/// The response body of a read of the value at `pointer`, already looked
/// up (`None`: there is none).
fn render_value(serial: u64, pointer: &str, value: Option<&Node>) -> Result<Vec<u8>, ApiError> {
    let value = value.ok_or_else(|| no_value(pointer))?;
    serde_json::to_vec(&ValueBody { serial, value }).map_err(internal)
}

fn no_value(pointer: &str) -> ApiError {
    ApiError::not_found(format!("no config value at {pointer:?}"))
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::new(500, "internal", e.to_string())
}

impl Handler<GetConfig> for ConfigActor {
    type Result = ();

    fn handle(&mut self, msg: GetConfig, _ctx: &mut Self::Context) {
        // O(1), and lets go of the channel before the (maybe long) encoding.
        let config = self.config.borrow().clone();
        let (serial, lsn) = (config.serial(), config.lsn());
        // A missing value is an answer about the document too, so it is
        // checked for durability like any other (published: durable already).
        let found = match msg.pointer.as_deref() {
            None => Ok(None),
            Some(p) => config.get(p).cloned().map(Some).ok_or_else(|| no_value(p)),
        };
        let wait = self.wal.wait_durable(lsn);
        let encoders = self.encoders.clone();
        actix::spawn(async move {
            let answer = match wait.await.map_err(durable_wait_failed).and(found) {
                Err(e) => Err(e),
                Ok(None) => Ok(encoders
                    .stream(Whole {
                        serial,
                        lsn,
                        config: config.doc().clone(),
                    })
                    .await),
                Ok(Some(value)) => Ok(encoders.stream(ValueBody { serial, value }).await),
            };
            let _ = msg.reply.send(answer);
        });
    }
}

/// Values up to this many bytes of JSON are read on the HTTP worker that
/// took the request ([`ConfigReader`]); larger ones, and the whole
/// document, go to the config actor, so encoding them never holds up a
/// worker's other connections.
pub const INLINE_READ_BYTES_MAX: usize = 64 * 1024;

/// Reads small config values where the request is, without the two thread
/// hops through the config actor: the same published document, the same
/// durability check (G4). `wconf-bench --workload read --connections
/// 64`, alternating builds on 2 cores: 38.0k and 39.3k requests/s through
/// the actor, 48.5k and 52.0k inline.
#[derive(Clone)]
pub struct ConfigReader {
    config: watch::Receiver<ConfigState>,
    wal: Arc<Wal>,
}

impl ConfigReader {
    pub fn new(config: watch::Receiver<ConfigState>, wal: Arc<Wal>) -> ConfigReader {
        ConfigReader { config, wal }
    }

    /// The body for the value at `pointer`, the change it shows being
    /// durable (published documents are); `None` when the value is over
    /// [`INLINE_READ_BYTES_MAX`] and the config actor must encode it.
    pub async fn read_small(&self, pointer: &str) -> Option<Result<Vec<u8>, ApiError>> {
        // O(1), and lets go of the channel before encoding.
        let config = self.config.borrow().clone();
        // Looked up once: the size check and the body use the same value.
        let value = config.get(pointer);
        if value.is_some_and(|v| v.encoded_len() > INLINE_READ_BYTES_MAX) {
            return None;
        }
        let body = render_value(config.serial(), pointer, value);
        let gate = self
            .wal
            .wait_durable(config.lsn())
            .await
            .map(drop)
            .map_err(durable_wait_failed);
        Some(gate.and(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::config::parse_patch;

    /// The document after setting `/n` to `n` at LSN `lsn`, from `base`.
    fn set(base: &ConfigState, lsn: u64, n: u64) -> ConfigState {
        let mut c = base.clone();
        let patch =
            parse_patch(&format!(r#"[{{"op": "add", "path": "/n", "value": {n}}}]"#)).unwrap();
        c.apply_patch(lsn, &patch).unwrap();
        c
    }

    #[test]
    fn a_document_shown_late_never_replaces_a_later_one() {
        // Invariant: readers' document only moves forward in LSN: showing
        // one older than (or as old as) the one shown changes nothing and
        // wakes no reader; a newer one replaces it.
        let (published, mut rx) = Published::new(ConfigState::default());
        let first = set(&ConfigState::default(), 5, 1);
        let second = set(&first, 9, 2);
        published.show(second.clone());
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().lsn(), 9);
        for stale in [first, second] {
            published.show(stale);
            assert!(!rx.has_changed().unwrap(), "a stale document was shown");
        }
        assert_eq!(rx.borrow().lsn(), 9);
        let shown = rx.borrow().clone();
        published.show(set(&shown, 12, 3));
        assert_eq!(rx.borrow().lsn(), 12);
        let n = rx
            .borrow()
            .get("/n")
            .map(|n| serde_json::to_string(n).unwrap());
        assert_eq!(n.as_deref(), Some("3"));
    }
}
