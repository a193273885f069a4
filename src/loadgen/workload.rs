//! The four workloads of issue 7 and `ping` (the HTTP path alone, their
//! ceiling), as the requests one client makes for one operation, plus the
//! set-up that gives them a document to work on and the tear-down that
//! closes what they opened.
//!
//! Everything lives under `/bench` of the document: `/bench/keys/k<i>`
//! (`--keys` values of `--value-bytes`) and `/bench/instances/i<n>`
//! (`--instances` small objects). Set-up replaces `/bench`, so a run starts
//! from the same document whatever ran before.

use std::sync::Arc;

use hyper::Method;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};

use super::http::{Conn, Endpoint, OpError};
use crate::api::types::*;

/// Wait this long for a lock or for `config`: far longer than any run's
/// queueing, so a timeout means something is wrong, and is counted.
pub const WAIT_MS: u64 = 60_000;
/// Lease of the sessions the workloads open; `contended` adds the run time.
pub const SESSION_TTL_MS: u64 = 60_000;
/// Keys per set-up transaction, so a large `--keys` stays far under the
/// daemon's 4 MiB patch limit per request.
const SETUP_KEYS_PER_TXN: usize = 1_000;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// One-shot config patches (`POST /v1/config/txn`), each setting one key.
    Txn,
    /// Session, instance lock (waiting), read, txn, close (which releases
    /// the lock in the same record).
    Job,
    /// Every client cycles on the `config` lock: acquire, write+release.
    Contended,
    /// `GET /v1/config/<path>`, mixed with txn writes at `--write-ratio`.
    Read,
    /// `GET /healthz`: no state, no record, no actor; what the HTTP path
    /// alone costs, the ceiling of every other workload on this machine.
    Ping,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Txn,
        Workload::Job,
        Workload::Contended,
        Workload::Read,
        Workload::Ping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Txn => "txn",
            Workload::Job => "job",
            Workload::Contended => "contended",
            Workload::Read => "read",
            Workload::Ping => "ping",
        }
    }

    /// What one operation is, for the throughput line.
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Txn => "changes",
            Workload::Job => "jobs",
            Workload::Contended => "cycles",
            Workload::Read | Workload::Ping => "requests",
        }
    }
}

/// What one operation was, for latencies kept apart by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Txn,
    Job,
    Cycle,
    Read,
    Write,
    Ping,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Txn => "txn",
            OpKind::Job => "job",
            OpKind::Cycle => "cycle",
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Ping => "ping",
        }
    }
}

/// The size of what a workload works on, as asked on the command line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Keys in `/bench/keys`.
    pub keys: usize,
    /// Bytes of each value written there.
    pub value_bytes: usize,
    /// Instances in `/bench/instances`, and `instance/i<n>` locks (`job`).
    pub instances: usize,
    /// `read`: the fraction of operations that are writes.
    pub write_ratio: f64,
    /// `read`: each read asks for the whole document (`GET /v1/config`), as
    /// WConfD's ReadConfig does, instead of one key. Absent from reports
    /// made before it existed.
    #[serde(default)]
    pub read_whole: bool,
    /// `job`: release the instance lock with a request of its own before
    /// closing the session (6 requests per job instead of 5). Absent from
    /// reports made before it existed, which all did so.
    #[serde(default)]
    pub release_before_close: bool,
}

/// The parameters every client shares.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub params: Params,
    /// Session lease for `contended`, whose sessions live the whole run.
    pub run_ttl_ms: u64,
    /// Random per run (not from `--seed`), so request ids of two runs never
    /// meet in the daemon's deduplication table, which would answer a new
    /// request with an old outcome and apply nothing.
    pub nonce: u64,
}

impl Plan {
    /// A value of exactly `value_bytes` bytes that names who wrote it.
    fn value(&self, tag: &str) -> String {
        let mut v: String = tag.chars().take(self.params.value_bytes).collect();
        while v.len() < self.params.value_bytes {
            v.push('.');
        }
        v
    }
}

/// The value every key has after set-up; [`Client`]s overwrite them with
/// values that start with `c<client>-`.
pub const SETUP_TAG: &str = "setup";

/// Gives the run its document: `/bench` with every key and instance, in as
/// many transactions as needed. Answers the number of changes made.
pub async fn setup(conn: &mut Conn, plan: &Plan) -> Result<u64, OpError> {
    let instances: serde_json::Map<String, Value> = (0..plan.params.instances)
        .map(|n| (format!("i{n}"), json!({"job": null, "token": null})))
        .collect();
    let first = json!([{"op": "add", "path": "/bench",
                        "value": {"keys": {}, "instances": instances}}]);
    txn(conn, first, None).await?;
    let mut changes = 1;
    let value = plan.value(SETUP_TAG);
    for start in (0..plan.params.keys).step_by(SETUP_KEYS_PER_TXN) {
        let end = (start + SETUP_KEYS_PER_TXN).min(plan.params.keys);
        let patch: Vec<Value> = (start..end)
            .map(|i| json!({"op": "add", "path": format!("/bench/keys/k{i}"), "value": value}))
            .collect();
        txn(conn, Value::Array(patch), None).await?;
        changes += 1;
    }
    Ok(changes)
}

/// Bytes of padding each set-up transaction adds: under the daemon's
/// request body and patch limits (4 MiB), with room for JSON quoting.
const PAD_BYTES_PER_TXN: usize = 2 << 20;
/// The padding's values: short strings in objects of many entries, the
/// shape of a real cluster config (nodes and instances with attributes).
const PAD_VALUE: &str =
    "a value of about one hundred bytes, as a node or instance attribute might be....";

/// Adds `/pad`, about `mb` MB of document that no workload touches, so a
/// run sees the cost of a large config (snapshots, memory) without its
/// operations changing. Answers the bytes of JSON added (the sum of each
/// part's serialised size).
pub async fn pad(conn: &mut Conn, mb: u64) -> Result<u64, OpError> {
    txn(
        conn,
        json!([{"op": "add", "path": "/pad", "value": {}}]),
        None,
    )
    .await?;
    let entry_bytes = PAD_VALUE.len() + 16;
    let per_txn = PAD_BYTES_PER_TXN / entry_bytes;
    let total = (mb as usize).saturating_mul(1_000_000) / entry_bytes;
    let mut added = 0u64;
    for (part, start) in (0..total).step_by(per_txn).enumerate() {
        let end = (start + per_txn).min(total);
        let entries = Value::Object(
            (start..end)
                .map(|i| (format!("e{i:08}"), Value::from(PAD_VALUE)))
                .collect(),
        );
        let bytes = entries.to_string().len() as u64;
        txn(
            conn,
            json!([{"op": "add", "path": format!("/pad/p{part}"), "value": entries}]),
            None,
        )
        .await?;
        added += bytes;
    }
    Ok(added)
}

async fn txn(
    conn: &mut Conn,
    patch: Value,
    request_id: Option<String>,
) -> Result<TxnResponse, OpError> {
    let req = TxnRequest {
        patch,
        if_serial: None,
        wait_ms: WAIT_MS,
        request_id,
    };
    let r: TxnResponse = conn
        .call(Method::POST, "/v1/config/txn", Some(&req))
        .await?;
    if !r.applied {
        return Err(OpError::unexpected("txn answered applied: false"));
    }
    Ok(r)
}

/// The answer of `/healthz`.
#[derive(serde::Deserialize)]
struct Health {
    ok: bool,
}

/// The answer to a single-path read, checked for its shape but with the
/// value skipped rather than built: at 100,000 reads a second the
/// generator's own parsing is CPU the daemon does not get.
#[derive(serde::Deserialize)]
#[allow(dead_code)] // checked by parsing, never read
struct Read {
    serial: u64,
    value: serde::de::IgnoredAny,
}

/// The answer to a whole-document read, checked the same way.
#[derive(serde::Deserialize)]
#[allow(dead_code)] // checked by parsing, never read
struct ReadWhole {
    serial: u64,
    lsn: u64,
    config: serde::de::IgnoredAny,
}

/// What an operation did.
pub struct Done {
    pub kind: OpKind,
    /// Config changes it made (each acknowledged one bumps the serial).
    pub changes: u64,
}

/// One client: one connection, its own random stream, and (for
/// `contended`) its own session for the whole run.
pub struct Client {
    pub id: usize,
    pub conn: Conn,
    rng: StdRng,
    plan: Arc<Plan>,
    seq: u64,
    session: Option<String>,
}

impl Client {
    pub fn new(id: usize, endpoint: &Endpoint, rng: StdRng, plan: Arc<Plan>) -> Client {
        Client {
            id,
            conn: Conn::new(endpoint),
            rng,
            plan,
            seq: 0,
            session: None,
        }
    }

    /// Opens what the client keeps for the whole run.
    pub async fn start(&mut self) -> Result<(), OpError> {
        // Connect now, so the run's first operation does not pay for it.
        let _: serde_json::Value = self.conn.call(Method::GET, "/healthz", None::<&()>).await?;
        if self.plan.workload == Workload::Contended {
            let ttl_ms = self.plan.run_ttl_ms;
            self.session = Some(self.open_session(ttl_ms).await?);
        }
        Ok(())
    }

    /// Closes what [`Client::start`] opened.
    pub async fn finish(&mut self) -> Result<(), OpError> {
        match self.session.take() {
            Some(s) => self.close_session(&s).await,
            None => Ok(()),
        }
    }

    /// A request id unique to this run, client and request.
    fn request_id(&self, step: &str) -> String {
        format!(
            "bench-{:016x}-{}-{}-{step}",
            self.plan.nonce, self.id, self.seq
        )
    }

    fn key_path(&mut self) -> String {
        format!(
            "/bench/keys/k{}",
            self.rng.gen_range(0..self.plan.params.keys)
        )
    }

    /// A patch that sets a random key to a value naming this write.
    fn key_patch(&mut self) -> Value {
        let path = self.key_path();
        let value = self.plan.value(&format!("c{}-{}-", self.id, self.seq));
        json!([{"op": "add", "path": path, "value": value}])
    }

    /// Runs one operation of the plan's workload.
    pub async fn op(&mut self) -> Result<Done, OpError> {
        self.seq += 1;
        match self.plan.workload {
            Workload::Txn => self.key_txn(OpKind::Txn).await,
            Workload::Job => self.job().await,
            Workload::Contended => self.cycle().await,
            Workload::Read => {
                if self.rng.gen_bool(self.plan.params.write_ratio) {
                    self.key_txn(OpKind::Write).await
                } else if self.plan.params.read_whole {
                    let _: ReadWhole = self
                        .conn
                        .call(Method::GET, "/v1/config", None::<&()>)
                        .await?;
                    Ok(Done {
                        kind: OpKind::Read,
                        changes: 0,
                    })
                } else {
                    let path = format!("/v1/config{}", self.key_path());
                    let _: Read = self.conn.call(Method::GET, &path, None::<&()>).await?;
                    Ok(Done {
                        kind: OpKind::Read,
                        changes: 0,
                    })
                }
            }
            Workload::Ping => {
                let h: Health = self.conn.call(Method::GET, "/healthz", None::<&()>).await?;
                if !h.ok {
                    return Err(OpError::unexpected("/healthz answered ok: false"));
                }
                Ok(Done {
                    kind: OpKind::Ping,
                    changes: 0,
                })
            }
        }
    }

    /// A one-shot transaction setting one random key.
    async fn key_txn(&mut self, kind: OpKind) -> Result<Done, OpError> {
        let patch = self.key_patch();
        self.txn(patch).await?;
        Ok(Done { kind, changes: 1 })
    }

    async fn txn(&mut self, patch: Value) -> Result<TxnResponse, OpError> {
        let id = self.request_id("t");
        txn(&mut self.conn, patch, Some(id)).await
    }

    async fn open_session(&mut self, ttl_ms: u64) -> Result<String, OpError> {
        let req = CreateSession {
            name: Some(format!("bench-{}", self.id)),
            ttl_ms,
        };
        let s: SessionCreated = self
            .conn
            .call(Method::POST, "/v1/sessions", Some(&req))
            .await?;
        Ok(s.session)
    }

    async fn close_session(&mut self, session: &str) -> Result<(), OpError> {
        let path = format!("/v1/sessions/{session}");
        let _: ReleaseResponse = self.conn.call(Method::DELETE, &path, None::<&()>).await?;
        Ok(())
    }

    async fn acquire(
        &mut self,
        session: &str,
        name: String,
        step: &str,
    ) -> Result<AcquireResponse, OpError> {
        let req = AcquireRequest {
            session: session.to_string(),
            locks: vec![LockSpec {
                name,
                mode: Mode::Exclusive,
            }],
            wait_ms: WAIT_MS,
            priority: 0,
            min: None,
            request_id: Some(self.request_id(step)),
        };
        let g: AcquireResponse = self
            .conn
            .call(Method::POST, "/v1/locks/acquire", Some(&req))
            .await?;
        if !g.granted {
            return Err(OpError::unexpected(format!(
                "acquire {} not granted after {WAIT_MS} ms (blockers {:?})",
                req.locks[0].name, g.blockers
            )));
        }
        Ok(g)
    }

    /// The job pattern: its session is closed whatever step fails, so no
    /// job leaves a session (and its locks) behind.
    async fn job(&mut self) -> Result<Done, OpError> {
        let session = self.open_session(SESSION_TTL_MS).await?;
        let result = self.job_steps(&session).await;
        let closed = self.close_session(&session).await;
        let changes = result?;
        closed?;
        Ok(Done {
            kind: OpKind::Job,
            changes,
        })
    }

    async fn job_steps(&mut self, session: &str) -> Result<u64, OpError> {
        let n = self.rng.gen_range(0..self.plan.params.instances);
        let lock = format!("instance/i{n}");
        let grant = self.acquire(session, lock.clone(), "a").await?;
        let path = format!("/bench/instances/i{n}");
        let _: Read = self
            .conn
            .call(Method::GET, &format!("/v1/config{path}"), None::<&()>)
            .await?;
        let value = json!({"job": format!("c{}-{}", self.id, self.seq), "token": grant.token});
        let patch = json!([{"op": "add", "path": path, "value": value}]);
        self.txn(patch).await?;
        // Closing the session releases the lock, in the same record, so a
        // job needs no release request of its own.
        if self.plan.params.release_before_close {
            let req = ReleaseRequest {
                session: session.to_string(),
                locks: Some(vec![lock]),
                downgrade: None,
                request_id: Some(self.request_id("r")),
            };
            let _: ReleaseResponse = self
                .conn
                .call(Method::POST, "/v1/locks/release", Some(&req))
                .await?;
        }
        Ok(1)
    }

    /// One `config` lock cycle: acquire (waiting), write with release.
    async fn cycle(&mut self) -> Result<Done, OpError> {
        let session = self
            .session
            .clone()
            .expect("contended clients start with a session");
        self.acquire(&session, "config".into(), "a").await?;
        let req = WriteRequest {
            session: session.clone(),
            patch: self.key_patch(),
            release: true,
            request_id: Some(self.request_id("w")),
        };
        let w: WriteResponse = match self
            .conn
            .call(Method::POST, "/v1/config/write", Some(&req))
            .await
        {
            Ok(w) => w,
            Err(e) => {
                // Hand the lock back (best effort: if the write did apply, it
                // released `config` already and this answers not_held), or
                // every other client would wait out its acquire.
                let release = ReleaseRequest {
                    session,
                    locks: Some(vec!["config".into()]),
                    downgrade: None,
                    request_id: None,
                };
                let _: Result<ReleaseResponse, _> = self
                    .conn
                    .call(Method::POST, "/v1/locks/release", Some(&release))
                    .await;
                return Err(e);
            }
        };
        if !w.applied {
            return Err(OpError::unexpected(
                "write with the config lock held was not applied",
            ));
        }
        Ok(Done {
            kind: OpKind::Cycle,
            changes: 1,
        })
    }
}
