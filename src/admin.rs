//! Admin HTTP server: `/healthz` (process alive), `/readyz` (policy active and every
//! issuer's keys loaded once), `/metrics` (Prometheus text), `/v1/status` (policy and keys).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::authz::Authorizer;

pub fn router(authorizer: Arc<Authorizer>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .with_state(authorizer)
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(authz): State<Arc<Authorizer>>) -> impl IntoResponse {
    if authz.is_ready() {
        return (StatusCode::OK, "ready\n".to_string());
    }
    let mut waiting: Vec<String> = Vec::new();
    if authz.policies().load().is_none() {
        waiting.push(match authz.policies().status().last_error {
            Some(e) => format!("the policy ({e})"),
            None => "the policy".into(),
        });
    }
    waiting.extend(
        authz
            .verifier()
            .issuers()
            .filter(|i| !i.loaded())
            .map(|i| format!("the keys of {}", i.issuer())),
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: waiting for {}\n", waiting.join(", ")),
    )
}

async fn metrics(State(authz): State<Arc<Authorizer>>) -> impl IntoResponse {
    let text = authz
        .metrics()
        .render(authz.is_ready(), &authz.policies().status());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn status(State(authz): State<Arc<Authorizer>>) -> impl IntoResponse {
    let issuers: Vec<serde_json::Value> = authz
        .verifier()
        .issuers()
        .map(|i| {
            serde_json::json!({
                "issuer": i.issuer(),
                "loaded": i.loaded(),
                "keys": i.current().kids().collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(serde_json::json!({
        "ready": authz.is_ready(),
        "policy": authz.policies().status(),
        "issuers": issuers,
    }))
}
