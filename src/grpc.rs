//! Envoy's `envoy.service.auth.v3.Authorization/Check`: the only code that sees a
//! CheckRequest come in and a CheckResponse go out.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse,
};
use envoy_types::pb::google::protobuf as pbuf;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::decision::{Decision, DenyReason};
use crate::input::CheckInput;
use crate::pipeline::{Authorizer, Outcome};
use crate::telemetry::traces;

/// The tonic service. Every request gets a decision: `Ok(CheckResponse)`, allow or deny.
#[derive(Clone)]
pub struct AuthzService {
    authorizer: Arc<Authorizer>,
}

impl AuthzService {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        AuthzService { authorizer }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let check = request.get_ref();
        let span = match traces::enabled() {
            false => tracing::Span::none(),
            true => {
                let headers = check
                    .attributes
                    .as_ref()
                    .and_then(|a| a.request.as_ref())
                    .and_then(|r| r.http.as_ref())
                    .map(|h| &h.headers as &dyn traces::Carrier);
                traces::check_span(request.metadata(), headers)
            }
        };
        let (response, _) = match span.is_none() {
            true => respond(&self.authorizer, check).await,
            false => respond(&self.authorizer, check).instrument(span).await,
        };
        Ok(Response::new(response))
    }
}

/// Decides one CheckRequest, records and logs the decision, and builds the response.
pub async fn respond(authorizer: &Authorizer, request: &CheckRequest) -> (CheckResponse, Outcome) {
    let start = Instant::now();
    let outcome = match CheckInput::read(request, authorizer.grpc_bodies()) {
        Ok(input) => authorizer.decide(&input).await,
        Err(e) => authorizer.unreadable(e),
    };
    // Counted and logged as decided; under `policy.dry_run`, answered with an allow.
    authorizer.metrics().record(&outcome.decision);
    authorizer
        .metrics()
        .check_took(&outcome.decision, start.elapsed());
    let dry_run_route = match crate::input::route_setting(request, "dry_run") {
        Some("true") => true,
        Some("false") => false,
        _ => authorizer.dry_run(),
    };
    let dry_run = dry_run_route && authorizer.dry_run_passes(&outcome.decision);
    if let (true, Decision::Deny(d)) = (dry_run, &*outcome.decision) {
        authorizer.metrics().dry_run_allowed(d.reason);
    }
    // As OPA-Envoy: every decision gets a fresh id, in the decision log line and in the
    // response's dynamic metadata (Envoy's access log can print it), cached or not.
    let decision_id = crate::ids::uuid_v4();
    log_decision(request, &outcome, start, &decision_id, dry_run);
    if let Some(log) = authorizer.decision_log() {
        let (status, reason) = match &*outcome.decision {
            Decision::Allow(_) => (200, None),
            Decision::Deny(d) => (d.status, Some(d.reason.label())),
        };
        log.log(crate::decision_log::Entry {
            decision_id: decision_id.clone(),
            timestamp: std::time::SystemTime::now(),
            input: outcome.input.clone(),
            result: outcome.result.clone(),
            revision: outcome.revision.clone(),
            query: outcome.query.clone(),
            decision: match outcome.decision.is_allow() {
                true => "allow",
                false => "deny",
            },
            reason,
            status,
            dry_run,
            error: outcome.error.as_ref().map(ToString::to_string),
            handler_ns: u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            cached: outcome.cached,
        });
    }
    let mut response = match dry_run {
        // A denial before any identity was established removes the identity headers.
        true if outcome.identity.is_empty() => outcome
            .decision
            .dry_run()
            .to_check_response(&authorizer.no_identity()),
        true => outcome
            .decision
            .dry_run()
            .to_check_response(&outcome.identity),
        false => outcome.decision.to_check_response(&outcome.identity),
    };
    if traces::enabled() {
        record_on_span(request, &outcome, &decision_id, dry_run);
    }
    let own_body = matches!(&*outcome.decision, Decision::Deny(d) if d.own_body);
    stamp_decision_id(&mut response, &decision_id, own_body);
    response
        .dynamic_metadata
        .get_or_insert_with(Default::default)
        .fields
        .insert(
            "decision_id".into(),
            pbuf::Value {
                kind: Some(pbuf::value::Kind::StringValue(decision_id)),
            },
        );
    (response, outcome)
}

/// What the Check's span shows of its decision: who, what, which policy; never a token.
fn record_on_span(request: &CheckRequest, outcome: &Outcome, decision_id: &str, dry_run: bool) {
    let span = tracing::Span::current();
    if span.is_none() {
        return;
    }
    if let Some(method) = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|h| h.method.as_str())
    {
        span.record("http.request.method", method);
    }
    match &*outcome.decision {
        Decision::Allow(_) => {
            span.record("onbehalf.decision", "allow");
            span.record("onbehalf.status", 200_i64);
        }
        Decision::Deny(d) => {
            span.record("onbehalf.decision", "deny");
            span.record("onbehalf.reason", d.reason.label());
            span.record("onbehalf.status", i64::from(d.status));
        }
    }
    if let Some(subject) = &outcome.subject {
        span.record("onbehalf.subject", &**subject);
    }
    if let Some(actor) = &outcome.actor {
        span.record("onbehalf.actor", &**actor);
    }
    span.record(
        "onbehalf.depth",
        i64::try_from(outcome.depth).unwrap_or(i64::MAX),
    );
    if let Some(revision) = &outcome.revision {
        span.record("onbehalf.policy_revision", &**revision);
    }
    span.record("onbehalf.decision_id", decision_id);
    span.record("onbehalf.cached", outcome.cached);
    span.record("onbehalf.dry_run", dry_run);
}

/// The header that carries the decision id, to the upstream on an allow (set by onbehalf
/// alone: a client's is overwritten) and to the client on a denial.
pub const DECISION_ID_HEADER: &str = "x-onbehalf-decision-id";

/// Puts the decision id where a support request starts from: a header to the upstream or
/// the client, and, in onbehalf's own JSON error bodies, a `decision_id` member (a body the
/// policy wrote is left as it wrote it).
fn stamp_decision_id(response: &mut CheckResponse, decision_id: &str, own_body: bool) {
    let header = HeaderValueOption {
        header: Some(HeaderValue {
            key: DECISION_ID_HEADER.into(),
            value: decision_id.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    match &mut response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok.headers.push(header),
        Some(HttpResponse::DeniedResponse(denied)) => {
            denied.headers.push(header);
            // onbehalf's own bodies are JSON objects it wrote: the id goes in before the
            // closing brace (a UUID needs no escaping).
            if own_body && denied.body.ends_with('}') {
                denied.body.pop();
                denied.body.push_str(",\"decision_id\":\"");
                denied.body.push_str(decision_id);
                denied.body.push_str("\"}");
            }
        }
        Some(HttpResponse::ErrorResponse(_)) | None => {}
    }
}

/// One line per decision. The path is logged without its query string (queries carry
/// secrets too often), and never a token. A denial that is not the policy's own answer says
/// why (`authz.detail`); failures that are onbehalf's, not the client's, log at warn.
fn log_decision(
    request: &CheckRequest,
    outcome: &Outcome,
    start: Instant,
    decision_id: &str,
    dry_run: bool,
) {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let method = http.map_or("", |h| h.method.as_str());
    let path = http.map_or("", |h| h.path.split('?').next().unwrap_or_default());
    // Envoy's x-request-id is what the access log and the upstream see; its `id` is internal.
    let request_id = http.map_or("", |h| {
        h.headers
            .get("x-request-id")
            .map_or(h.id.as_str(), String::as_str)
    });
    let subject = outcome.subject.as_deref().unwrap_or("");
    let actor = outcome.actor.as_deref().unwrap_or("");
    let revision = outcome.revision.as_deref().unwrap_or("");
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let detail = outcome
        .error
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let Decision::Deny(d) = &*outcome.decision else {
        tracing::info!(
            authz.decision = "allow",
            http.method = method,
            http.path = path,
            http.request_id = request_id,
            authz.subject = subject,
            authz.actor = actor,
            authz.depth = outcome.depth,
            authz.minted = outcome.minted.is_some(),
            policy.revision = revision,
            authz.duration_us = micros,
            authz.decision_id = decision_id,
            authz.dry_run = dry_run,
            "Request allowed"
        );
        return;
    };
    macro_rules! denied {
        ($level:ident) => {
            tracing::$level!(
                authz.decision = "deny",
                authz.reason = d.reason.label(),
                authz.detail = %detail,
                http.status = d.status,
                http.method = method,
                http.path = path,
                http.request_id = request_id,
                authz.subject = subject,
                authz.actor = actor,
                authz.depth = outcome.depth,
                policy.revision = revision,
                authz.duration_us = micros,
                authz.decision_id = decision_id,
                authz.dry_run = dry_run,
                "Request denied"
            )
        };
    }
    match d.reason {
        DenyReason::Internal
        | DenyReason::PolicyResult
        | DenyReason::EvalTimeout
        | DenyReason::RouteConfig => {
            denied!(warn)
        }
        _ => denied!(info),
    }
}
