//! Admin HTTP server: `/healthz` (process alive), `/readyz` (policy compiled and every
//! issuer's keys loaded once), `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::authz::Authorizer;

pub fn router(authorizer: Arc<Authorizer>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(authorizer)
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(authz): State<Arc<Authorizer>>) -> impl IntoResponse {
    match authz.is_ready() {
        true => (StatusCode::OK, "ready\n".to_string()),
        false => {
            let waiting: Vec<&str> = authz
                .verifier()
                .issuers()
                .filter(|i| !i.loaded())
                .map(|i| i.issuer())
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: keys not loaded yet for {}\n",
                    waiting.join(", ")
                ),
            )
        }
    }
}

async fn metrics(State(authz): State<Arc<Authorizer>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        authz.metrics().render(authz.is_ready()),
    )
}
