//! What the request-metrics middleware (`api::metrics::observe`) adds to a
//! request: the same app, with the daemon's route patterns and a handler
//! that answers at once, called in-process with and without it.
//!
//! - `request_metrics/{plain,observed}/{static,pattern}`: one iteration is
//!   one request through the app's service (no sockets): `static` is
//!   `POST /v1/config/txn`, `pattern` is `GET /v1/config/a/b`, matched by
//!   the regex route `/v1/config/{path:.*}`. The difference between
//!   `observed` and `plain` is the middleware's cost per request: two clock
//!   reads, the route pattern lookup, one counter and one histogram.

use actix_web::dev::{Service, ServiceResponse};
use actix_web::{test, web, App, HttpResponse};
use criterion::{criterion_group, criterion_main, Criterion};
use wconf::metrics::Metrics;

async fn answer() -> HttpResponse {
    HttpResponse::Ok().finish()
}

/// The daemon's route table, each route answering at once.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(answer))
        .route("/metrics", web::get().to(answer))
        .route("/v1/status", web::get().to(answer))
        .route("/v1/sessions", web::post().to(answer))
        .route("/v1/sessions", web::get().to(answer))
        .route("/v1/sessions/{id}/keepalive", web::post().to(answer))
        .route("/v1/sessions/{id}", web::delete().to(answer))
        .route("/v1/locks/acquire", web::post().to(answer))
        .route("/v1/locks/release", web::post().to(answer))
        .route("/v1/locks", web::get().to(answer))
        .route("/v1/config", web::get().to(answer))
        .route("/v1/config/write", web::post().to(answer))
        .route("/v1/config/txn", web::post().to(answer))
        .route("/v1/config/{path:.*}", web::get().to(answer));
}

fn requests(c: &mut Criterion) {
    let system = actix_web::rt::System::new();
    let plain = system.block_on(test::init_service(App::new().configure(routes)));
    let observed = system.block_on(test::init_service(
        App::new()
            .app_data(web::Data::new(Metrics::new()))
            .configure(routes)
            .wrap(actix_web::middleware::from_fn(wconf::api::metrics::observe)),
    ));
    let cases = [
        ("static", "/v1/config/txn", true),
        ("pattern", "/v1/config/a/b", false),
    ];
    let mut group = c.benchmark_group("request_metrics");
    for (case, uri, post) in cases {
        let request = || {
            let r = if post {
                test::TestRequest::post()
            } else {
                test::TestRequest::get()
            };
            r.uri(uri).to_request()
        };
        group.bench_function(format!("plain/{case}"), |b| {
            b.iter(|| {
                let res: ServiceResponse = system.block_on(plain.call(request())).unwrap();
                assert!(res.status().is_success());
            })
        });
        group.bench_function(format!("observed/{case}"), |b| {
            b.iter(|| {
                let res = system.block_on(observed.call(request())).unwrap();
                assert!(res.status().is_success());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, requests);
criterion_main!(benches);
