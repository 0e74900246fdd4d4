//! Admin HTTP server: `/healthz` (process alive), `/readyz` (policy active and every
//! issuer's keys loaded once), `/metrics` (Prometheus text), `/v1/status` (policy and keys).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::cache::CacheCounts;
use crate::pipeline::Authorizer;
use crate::telemetry::{self, Scrape};

pub fn router(authorizer: Arc<Authorizer>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(authorizer)
}

async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readyz(State(authz): State<Arc<Authorizer>>) -> impl IntoResponse {
    if authz.readiness().is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_string(),
        );
    }
    let waiting = authz.readiness().waiting();
    if waiting.is_empty() {
        return (StatusCode::OK, "ready\n".to_string());
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: waiting for {}\n", waiting.join(", ")),
    )
}

async fn metrics(State(authz): State<Arc<Authorizer>>) -> impl IntoResponse {
    let policy = authz.policies().status();
    let verifier = authz.verifier();
    // Counting evictions runs the caches' pending maintenance: not on this runtime, which
    // also accepts gRPC connections.
    let caches = {
        let authz = authz.clone();
        tokio::task::spawn_blocking(move || {
            let tokens = authz.verifier().token_cache().map(|c| c.counts());
            let decisions = authz.decision_cache().map(|c| CacheCounts {
                evictions: c.evictions(),
                entries: c.entry_count(),
                ..CacheCounts::default()
            });
            (tokens, decisions)
        })
    };
    let (token_cache, decision_cache) = caches.await.unwrap_or_default();
    let scrape = Scrape {
        ready: authz.is_ready(),
        policy: &policy,
        token_cache,
        decision_cache,
        issuers: verifier.issuers().map(|i| i.counts()).collect(),
        decision_log: authz.decision_log().map(|log| log.scrape()),
    };
    let text = authz.metrics().render(&scrape);
    ([(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)], text)
}

/// The public keys of minted tokens; 404 when minting is off. Verifiers may cache the
/// document briefly: a rotated-out key stays in it for `mint.max_ttl`.
async fn jwks(State(authz): State<Arc<Authorizer>>) -> axum::response::Response {
    match authz.minter() {
        Some(minter) => (
            [(header::CACHE_CONTROL, JWKS_CACHE_CONTROL)],
            Json(minter.keys().jwks()),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "minting is not enabled\n").into_response(),
    }
}

/// How long verifiers may keep the JWKS: a new key signs at once, so a verifier that does
/// not fetch again on an unknown `kid` refuses new tokens for at most this long.
const JWKS_CACHE_CONTROL: &str = "public, max-age=30";

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
    // Key ids only: the private key is never shown.
    let mint = authz.minter().map(|m| {
        serde_json::json!({
            "header": m.header(),
            "kids": m.keys().kids(),
        })
    });
    Json(serde_json::json!({
        "ready": authz.is_ready(),
        "policy": authz.policies().status(),
        "issuers": issuers,
        "mint": mint,
    }))
}
