//! HTTP API v1 (actix-web): parses and checks the shape of requests, hands
//! them to the actors with `try_send`, and turns answers into JSON. No state
//! lives here.

pub mod error;
pub mod guard;
pub mod metrics;
pub mod types;

use std::str::FromStr;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::actors::config::{ConfigActor, ConfigReader, GetConfig};
use crate::actors::lock::{self, LockActor};
use crate::actors::mailbox::{Counted, Mailbox};
use crate::actors::Reply;
use crate::state::config::ParsedPatch;
use crate::state::locks::{PRIORITY_MAX, PRIORITY_MIN};
use crate::state::{LockRequest, SessionId};
use error::ApiError;
use types::*;

/// The default request body limit (`--max-body`).
pub const BODY_BYTES_MAX_DEFAULT: usize = 16 << 20;

/// What every handler needs.
#[derive(Clone)]
pub struct Handles {
    pub lock: Mailbox<LockActor>,
    pub config: Mailbox<ConfigActor>,
    /// Small config reads, served on the HTTP worker.
    pub config_reader: ConfigReader,
    pub wal_dir: std::path::PathBuf,
}

/// Sends a request to an actor without queueing past a full mailbox, and
/// waits for its answer.
async fn ask<A, M, T>(to: &Mailbox<A>, make: impl FnOnce(Reply<T>) -> M) -> Result<T, ApiError>
where
    A: Actor<Context = Context<A>> + Handler<Counted<M>>,
    M: Message<Result = ()> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    to.try_send(make(tx)).map_err(|e| match e {
        SendError::Full(_) => ApiError::busy("the request queue"),
        SendError::Closed(_) => ApiError::unavailable("the daemon is stopping"),
    })?;
    rx.await.map_err(|_| {
        ApiError::outcome_unknown(
            "the daemon stopped before answering; the request may or may not have been \
             carried out: retry it with the same request_id",
        )
    })?
}

fn session_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("malformed session id {text:?}: {e}")))
}

fn ok<T: serde::Serialize>(value: T) -> HttpResponse {
    HttpResponse::Ok().json(value)
}

/// The body limit and the JSON error format for malformed bodies, unknown
/// fields and wrong types (400) and bodies over the limit (413).
pub fn json_config(body_bytes_max: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(body_bytes_max)
        .error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError as J;
            let api = match &err {
                J::OverflowKnownLength { length, limit } => ApiError::new(
                    413,
                    "too_large",
                    format!("request body of {length} bytes exceeds the limit of {limit} bytes"),
                ),
                J::Overflow { limit } => ApiError::new(
                    413,
                    "too_large",
                    format!("request body exceeds the limit of {limit} bytes"),
                ),
                J::ContentType => ApiError::new(
                    415,
                    "unsupported_media_type",
                    "the body must be JSON (Content-Type: application/json)",
                ),
                J::Deserialize(e) => ApiError::bad_request(format!("invalid JSON body: {e}")),
                other => ApiError::bad_request(format!("invalid request body: {other}")),
            };
            api.into()
        })
}

/// Routes of API v1. The router tries them in this order, and a pattern
/// with a parameter is a regex match, so the hot routes come first and the
/// config reads' pattern is the only regex most requests meet. A static
/// route stays before a pattern that also matches its path.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/config/txn", web::post().to(txn))
        .route("/v1/config/write", web::post().to(write))
        .route("/v1/locks/acquire", web::post().to(acquire))
        .route("/v1/locks/release", web::post().to(release))
        .route("/v1/config/{path:.*}", web::get().to(get_config_path))
        .route("/v1/config", web::get().to(get_config))
        .route("/v1/locks", web::get().to(get_locks))
        .route("/v1/sessions", web::post().to(create_session))
        .route("/v1/sessions", web::get().to(list_sessions))
        .route("/v1/sessions/{id}/keepalive", web::post().to(keepalive))
        .route("/v1/sessions/{id}", web::delete().to(close_session))
        .route("/v1/status", web::get().to(status))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics::scrape))
        .route("/v1/admin/snapshot", web::post().to(admin_snapshot));
}

/// Unknown routes and methods answer in the API's error format.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::not_found(format!("no route {} {}", req.method(), req.path())).error_response()
}

async fn healthz() -> HttpResponse {
    ok(serde_json::json!({"ok": true}))
}

async fn status(h: web::Data<Handles>) -> Result<HttpResponse, ApiError> {
    let mut status = ask(&h.lock, |reply| lock::GetStatus { reply }).await?;
    // Counting segment files is I/O: off the async threads.
    let dir = h.wal_dir.clone();
    let (segments, bytes) = web::block(move || segment_usage(&dir))
        .await
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    status.segments = segments;
    status.segment_bytes = bytes;
    Ok(ok(status))
}

/// Segment files in `dir` and their bytes (file sizes, so preallocated
/// space counts), read from the real file system.
pub(crate) fn segment_usage(dir: &std::path::Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(crate::wal::segment::parse_segment_name)
                .is_some()
        })
        .fold((0, 0), |(n, b), e| {
            (n + 1, b + e.metadata().map_or(0, |m| m.len()))
        })
}

async fn create_session(
    h: web::Data<Handles>,
    body: web::Json<CreateSession>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let session = new_session_id();
    let created = ask(&h.lock, |reply| lock::CreateSession {
        session,
        name: body.name,
        ttl_ms: body.ttl_ms,
        reply,
    })
    .await?;
    Ok(HttpResponse::Created().json(created))
}

/// 128 bits from the operating system's generator, so one client cannot
/// guess another's session.
fn new_session_id() -> SessionId {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    SessionId(u128::from_le_bytes(bytes))
}

async fn list_sessions(h: web::Data<Handles>) -> Result<HttpResponse, ApiError> {
    Ok(ok(ask(&h.lock, |reply| lock::ListSessions { reply }).await?))
}

/// A keepalive carries no fields: an empty body, or an empty JSON object.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

async fn keepalive(
    h: web::Data<Handles>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice::<NoFields>(&body)
            .map_err(|e| ApiError::bad_request(format!("keepalive takes no body or {{}}: {e}")))?;
    }
    let session = session_id(&id)?;
    Ok(ok(
        ask(&h.lock, |reply| lock::Keepalive { session, reply }).await?
    ))
}

async fn close_session(
    h: web::Data<Handles>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let session = session_id(&id)?;
    Ok(ok(ask(&h.lock, |reply| lock::CloseSession {
        session,
        reply,
    })
    .await?))
}

async fn acquire(
    h: web::Data<Handles>,
    body: web::Json<AcquireRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let session = session_id(&body.session)?;
    if !(i64::from(PRIORITY_MIN)..=i64::from(PRIORITY_MAX)).contains(&body.priority) {
        return Err(ApiError::new(
            400,
            "priority_out_of_range",
            format!(
                "priority {} is outside {PRIORITY_MIN}..={PRIORITY_MAX}",
                body.priority
            ),
        ));
    }
    let locks = body
        .locks
        .iter()
        .map(|l| LockRequest::new(l.name.clone(), l.mode.into()))
        .collect();
    let granted = ask(&h.lock, |reply| lock::Acquire {
        session,
        locks,
        wait_ms: body.wait_ms,
        priority: body.priority as i8,
        min: body.min,
        request_id: body.request_id,
        reply,
    })
    .await?;
    Ok(ok(granted))
}

async fn release(
    h: web::Data<Handles>,
    body: web::Json<ReleaseRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let session = session_id(&body.session)?;
    let released = ask(&h.lock, |reply| lock::Release {
        session,
        release: body.locks,
        downgrade: body.downgrade.unwrap_or_default(),
        request_id: body.request_id,
        reply,
    })
    .await?;
    Ok(ok(released))
}

async fn get_locks(h: web::Data<Handles>) -> Result<HttpResponse, ApiError> {
    Ok(ok(ask(&h.lock, |reply| lock::GetLocks { reply }).await?))
}

async fn read_config(h: &Handles, pointer: Option<String>) -> Result<HttpResponse, ApiError> {
    let body = ask(&h.config, |reply| GetConfig { pointer, reply }).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body))
}

async fn get_config(h: web::Data<Handles>) -> Result<HttpResponse, ApiError> {
    read_config(&h, None).await
}

/// `GET /v1/config/a/b` reads the JSON pointer `/a/b` (already
/// percent-decoded by the router; `~1` and `~0` escape `/` and `~`).
async fn get_config_path(
    h: web::Data<Handles>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let pointer = format!("/{}", path.into_inner());
    if let Some(body) = h.config_reader.read_small(&pointer).await {
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(body?));
    }
    read_config(&h, Some(pointer)).await
}

/// Patches travel as JSON text in the record, as the client sent it; they
/// are parsed and bounded here, once, and the ops go to the sequencer with
/// the text.
fn parsed_patch(patch: Box<RawValue>) -> Result<ParsedPatch, ApiError> {
    if !patch.get().starts_with('[') {
        return Err(ApiError::new(
            400,
            "bad_patch",
            "patch must be a JSON array of RFC 6902 operations",
        ));
    }
    // A malformed patch is bad input whoever sends it: refuse it before any
    // lock or session check can answer "not applied" instead.
    Ok(ParsedPatch::parse(String::from(Box::<str>::from(patch)))?)
}

async fn write(
    h: web::Data<Handles>,
    body: web::Json<WriteRequest<Box<RawValue>>>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let session = session_id(&body.session)?;
    let patch = parsed_patch(body.patch)?;
    let written = ask(&h.lock, |reply| lock::Write {
        session,
        patch,
        release: body.release,
        request_id: body.request_id,
        reply,
    })
    .await?;
    Ok(ok(written))
}

async fn txn(
    h: web::Data<Handles>,
    body: web::Json<TxnRequest<Box<RawValue>>>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let patch = parsed_patch(body.patch)?;
    let done = ask(&h.lock, |reply| lock::Txn {
        patch,
        if_serial: body.if_serial,
        wait_ms: body.wait_ms,
        request_id: body.request_id,
        reply,
    })
    .await?;
    Ok(ok(done))
}

/// Answers once the snapshot is durable (and old files are collected).
async fn admin_snapshot(h: web::Data<Handles>) -> Result<HttpResponse, ApiError> {
    Ok(ok(ask(&h.lock, |reply| lock::TakeSnapshot { reply }).await?))
}

/// `/healthz` while the daemon recovers: 503, and where recovery is.
pub async fn healthz_recovering(progress: web::Data<crate::replay::Progress>) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", error::RETRY_AFTER_S.to_string()))
        .json(serde_json::json!({"state": "recovering", "progress": progress.view()}))
}

/// Every other route while the daemon recovers: 503 `recovering`.
pub async fn recovering(progress: web::Data<crate::replay::Progress>) -> HttpResponse {
    use actix_web::ResponseError;
    let v = progress.view();
    let message = format!(
        "the daemon is recovering ({:?}, {:.1}% of {} records replayed); retry later",
        v.phase, v.percent, v.records_total
    );
    ApiError {
        retry_after_s: Some(error::RETRY_AFTER_S),
        ..ApiError::new(503, "recovering", message)
    }
    .error_response()
}
