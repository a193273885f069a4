//! The API's one error type and its wire form,
//! `{"error":{"code":"...","message":"..."}}`, with the status and (for
//! backpressure) the `Retry-After` header.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};

use crate::state::StateError;
use crate::wal::WalError;

/// Seconds a client is told to wait after a 503 for a full queue.
pub const RETRY_AFTER_S: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Set for 503 backpressure answers.
    pub retry_after_s: Option<u32>,
    /// Set for 401: the `WWW-Authenticate` challenge.
    pub challenge: Option<&'static str>,
}

/// The JSON body of an error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            challenge: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", message)
    }

    /// A bounded queue is full: 503 with `Retry-After`.
    pub fn busy(what: &str) -> ApiError {
        ApiError {
            retry_after_s: Some(RETRY_AFTER_S),
            ..ApiError::new(503, "busy", format!("{what} is full; retry later"))
        }
    }

    /// A TCP request without the right bearer token (`--auth-token-file`).
    pub fn unauthorized() -> ApiError {
        ApiError {
            challenge: Some("Bearer realm=\"wconfd\""),
            ..ApiError::new(
                401,
                "unauthorized",
                "this daemon needs `Authorization: Bearer <token>` (the token in its --auth-token-file)",
            )
        }
    }

    /// A clean shutdown has begun: the request was not carried out. The
    /// next start of the daemon will take it (hence `Retry-After`).
    pub fn shutting_down() -> ApiError {
        ApiError {
            retry_after_s: Some(RETRY_AFTER_S),
            ..ApiError::new(
                503,
                "shutting_down",
                "wconfd is shutting down; nothing was done, retry against its next start",
            )
        }
    }

    /// The daemon is stopping (or has failed) and takes no more requests.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "unavailable", message)
    }

    /// The request reached the sequencer but its answer never came back:
    /// it may or may not have been carried out (and may still be recovered
    /// after a restart). Unlike every other error, this is not a refusal.
    pub fn outcome_unknown(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "outcome_unknown", message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        use StateError::*;
        let code = match &e {
            UnknownSession { .. } => "unknown_session",
            LeaseExpired { .. } => "lease_expired",
            TtlOutOfRange { .. } => "ttl_out_of_range",
            InvalidName { .. } => "invalid_name",
            PriorityOutOfRange { .. } => "priority_out_of_range",
            DuplicateLock { .. } => "duplicate_lock",
            NoLocks => "no_locks",
            MinOutOfRange { .. } => "min_out_of_range",
            RequestTooLarge { .. } | PatchTooLarge { .. } => "too_large",
            Full { .. } => "busy",
            Blocked { .. } => "blocked",
            OrderViolation { .. } => "lock_order_violation",
            Conflict { .. } => "conflict",
            NotHeld { .. } => "not_held",
            NotExclusive { .. } => "not_exclusive",
            ConfigLockNotHeld { .. } => "config_lock_not_held",
            PatchParse { .. } => "bad_patch",
            Patch { .. } => "patch_failed",
            DuplicateRequest { .. } => "duplicate_request",
            _ => "internal",
        };
        let mut err = ApiError::new(e.http_status(), code, e.to_string());
        if err.status == 503 {
            err.retry_after_s = Some(RETRY_AFTER_S);
        }
        err
    }
}

impl From<WalError> for ApiError {
    fn from(e: WalError) -> ApiError {
        match e {
            WalError::Full { .. } => ApiError::busy("the WAL queue"),
            WalError::RecordTooLarge { .. } => ApiError::new(413, "too_large", e.to_string()),
            other => ApiError::unavailable(other.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if let Some(s) = self.retry_after_s {
            resp.insert_header(("Retry-After", s.to_string()));
        }
        if let Some(c) = self.challenge {
            resp.insert_header(("WWW-Authenticate", c));
        }
        resp.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        })
    }
}
