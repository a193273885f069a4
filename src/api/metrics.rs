//! `GET /metrics` and the middleware that counts and times every request
//! by route pattern, method and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use crate::metrics::{self, Metrics, UNMATCHED_ROUTE};

/// The scrape: gathered on a blocking thread (it lists the log
/// directory), never through an actor, so it answers while they are busy.
pub async fn scrape(metrics: web::Data<Metrics>) -> Result<HttpResponse, ApiError> {
    let metrics = metrics.into_inner();
    let body = web::block(move || metrics.render())
        .await
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type(metrics::content_type())
        .body(body))
}

/// The `method` label: the standard methods by name, anything else as
/// `other`, so a client cannot mint label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Counts and times each request (`wconf_http_requests_total`,
/// `wconf_http_request_duration_seconds`). Wrap it outermost, so refusals
/// by other middleware count too. Without `web::Data<Metrics>` in the app
/// it passes requests through untouched.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let Some(metrics) = req.app_data::<web::Data<Metrics>>().cloned() else {
        return next.call(req).await;
    };
    let method = method_label(req.method());
    let result = next.call(req).await;
    match &result {
        Ok(res) => {
            // The pattern the router matched (bounded by the route table);
            // asked after routing, so the router's match is reused.
            let route = res.request().match_pattern();
            let route = route.as_deref().unwrap_or(UNMATCHED_ROUTE);
            metrics.observe_request(route, method, res.status().as_str(), started.elapsed());
        }
        // A middleware refused the request before any route ran.
        Err(e) => {
            let status = e.as_response_error().status_code();
            metrics.observe_request(UNMATCHED_ROUTE, method, status.as_str(), started.elapsed());
        }
    }
    result
}
