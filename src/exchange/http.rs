//! The exchange's HTTP endpoints: `POST /token`, the discovery documents (OpenID Connect
//! and RFC 8414) and the JWKS, so that a sidecar trusts the exchange as an ordinary issuer
//! (`discovery: true`). Served on `exchange.addr`, or merged into the admin router.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::{ExchangeError, Exchanger, Record, form};
use tracing::Instrument as _;

use crate::telemetry::{ExchangeResult, traces};

/// Where the JWKS of issued tokens is served (beside the minting JWKS on the admin listener).
pub const JWKS_PATH: &str = "exchange/jwks.json";

pub fn router(exchanger: Arc<Exchanger>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/oauth-authorization-server", get(discovery))
        .route(&format!("/{JWKS_PATH}"), get(jwks))
        .with_state(exchanger)
}

async fn token(State(x): State<Arc<Exchanger>>, request: Request) -> Response {
    let span = traces::exchange_span(request.headers());
    token_traced(x, request).instrument(span).await
}

async fn token_traced(x: Arc<Exchanger>, request: Request) -> Response {
    let start = Instant::now();
    let mut record = Record::default();
    let result = match read_body(&x, request).await {
        Ok((content_type, body)) => match form::parse(content_type.as_deref(), &body) {
            Ok(req) => x.exchange(&req, &mut record).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let code = match &result {
        Ok(_) => ExchangeResult::Issued,
        Err(e) => e.code,
    };
    x.authorizer.metrics().exchange(code);
    log(&record, result.as_ref().err(), code, start);
    if traces::enabled() {
        let span = tracing::Span::current();
        span.record("onbehalf.result", code.label());
        if let Some(subject) = &record.subject {
            span.record("onbehalf.subject", &**subject);
        }
        if let Some(actor) = &record.actor {
            span.record("onbehalf.actor", &**actor);
        }
    }
    match result {
        Ok(issued) => {
            let mut body = json!({
                "access_token": issued.access_token,
                "issued_token_type": issued.issued_token_type,
                "token_type": "Bearer",
                "expires_in": issued.expires_in,
            });
            if let (false, Some(fields)) = (issued.scope.is_empty(), body.as_object_mut()) {
                fields.insert("scope".into(), json!(issued.scope.join(" ")));
            }
            (no_store(), Json(body)).into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// The body, refused before it is read past `max_request_bytes`.
async fn read_body(
    x: &Exchanger,
    request: Request,
) -> Result<(Option<String>, Bytes), ExchangeError> {
    let limit = x.max_request_bytes();
    let too_large = || {
        ExchangeError::new(
            ExchangeResult::InvalidRequest,
            format!("the request body is larger than {limit} bytes"),
        )
    };
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body: Body = request.into_body();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    Ok((content_type, bytes))
}

fn error_response(e: &ExchangeError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut headers = no_store();
    if let Some(wait) = e.retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            headers.insert(header::RETRY_AFTER, v);
        }
    }
    let body = json!({"error": e.code.label(), "error_description": e.description});
    (status, headers, Json(body)).into_response()
}

/// RFC 6749 §5.1: token responses are never cached.
fn no_store() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h
}

/// One line per exchange: who, for whom, what was asked and issued, the policy revision.
fn log(record: &Record, error: Option<&ExchangeError>, code: ExchangeResult, start: Instant) {
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let subject = record.subject.as_deref().unwrap_or("");
    let actor = record.actor.as_deref().unwrap_or("");
    let revision = record.revision.as_deref().unwrap_or("");
    let detail = error.map(|e| e.description.as_str()).unwrap_or("");
    macro_rules! line {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                exchange.result = code.label(),
                exchange.detail = detail,
                exchange.subject = subject,
                exchange.actor = actor,
                exchange.depth = record.depth,
                exchange.requested_scope = %record.requested_scope.join(" "),
                exchange.requested_audience = %record.requested_audience.join(" "),
                exchange.issued_scope = %record.issued_scope.join(" "),
                exchange.issued_audience = %record.issued_audience.join(" "),
                exchange.jti = record.jti.as_deref().unwrap_or(""),
                policy.revision = revision,
                exchange.duration_us = micros,
                $message
            )
        };
    }
    match code {
        ExchangeResult::Issued => line!(info, "Token exchanged"),
        ExchangeResult::ServerError => line!(warn, "Token exchange failed"),
        _ => line!(info, "Token exchange refused"),
    }
}

/// The authorization-server metadata (RFC 8414), served at both well-known paths: it
/// advertises token exchange only — no authorization endpoint, no ID tokens.
async fn discovery(State(x): State<Arc<Exchanger>>) -> impl IntoResponse {
    Json(json!({
        "issuer": x.issuer(),
        "token_endpoint": x.url("token"),
        "jwks_uri": x.url(JWKS_PATH),
        "grant_types_supported": [form::GRANT_TYPE],
        "token_endpoint_auth_methods_supported": ["none"],
    }))
}

/// The public keys of issued tokens: the current one and those rotated out less than
/// `exchange.max_ttl` ago.
async fn jwks(State(x): State<Arc<Exchanger>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=30")],
        Json(x.keys().jwks()),
    )
}
