//! The gate in front of every route: who may talk to the daemon (the bearer
//! token on TCP) and whether it still takes requests (a clean shutdown has
//! begun). Runs before any handler, so a refused request reaches no actor
//! and writes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::auth::Token;

/// Routes a monitor reaches without the token: they show no configuration,
/// lock or session, and a health checker should not need a secret.
pub const OPEN_PATHS: [&str; 2] = ["/healthz", "/metrics"];

/// Shared by every worker through `app_data`.
#[derive(Clone, Default)]
pub struct Gate {
    /// Set when the clean shutdown begins; from then on every request is
    /// answered 503 `shutting_down` here.
    pub stopping: Arc<AtomicBool>,
    /// With `--auth-token-file`: the token every TCP request must carry.
    pub token: Option<Arc<Token>>,
}

impl Gate {
    /// Refuses new requests from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn check(&self, req: &ServiceRequest) -> Result<(), ApiError> {
        // The Unix socket has no peer address: its file mode decides who
        // connects, so only TCP needs the token.
        if let (Some(token), Some(_)) = (&self.token, req.peer_addr()) {
            if !OPEN_PATHS.contains(&req.path()) && !bearer_matches(req, token.as_str().as_bytes())
            {
                return Err(ApiError::unauthorized());
            }
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::shutting_down());
        }
        Ok(())
    }
}

/// Whether the request carries `Authorization: Bearer <token>`. The
/// comparison takes the same time wherever the first wrong byte is, so the
/// token cannot be guessed byte by byte from response times (only its
/// length is not hidden).
fn bearer_matches(req: &ServiceRequest, token: &[u8]) -> bool {
    let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        return false;
    };
    let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
        return false;
    };
    bool::from(given.ct_eq(token))
}

/// The middleware (`actix_web::middleware::from_fn`).
pub async fn gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let refused = req
        .app_data::<web::Data<Gate>>()
        .map_or(Ok(()), |g| g.check(&req));
    match refused {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => Ok(req.into_response(e.error_response()).map_into_right_body()),
    }
}
