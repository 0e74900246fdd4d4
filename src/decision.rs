//! `Decision` -> Envoy `CheckResponse`.
//!
//! Every decision becomes `Ok(CheckResponse)`: an allow with header mutations, or a denial
//! with status, headers and a short JSON body. Denials never carry policy internals.

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse, QueryParameter,
};
use envoy_types::pb::google::protobuf as pbuf;
use envoy_types::pb::google::rpc;
use serde_json::{Map, Value as Json, json};

use crate::authn::AuthnError;
use crate::policy::{AppendAction, Grant, HeaderOp, Verdict};

/// What onbehalf answers for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

/// An allowed request and the changes to make to it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allow {
    pub headers: Vec<HeaderOp>,
    pub headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderOp>,
    pub query_parameters_to_set: Vec<(String, String)>,
    pub query_parameters_to_remove: Vec<String>,
    pub dynamic_metadata: Option<Map<String, Json>>,
    pub grant: Option<Grant>,
}

/// A denied request: status, response headers and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Deny {
    pub status: u16,
    pub reason: DenyReason,
    pub headers: Vec<HeaderOp>,
    pub body: String,
    /// Whether `body` is onbehalf's own JSON error object (not one the policy wrote).
    pub own_body: bool,
    pub dynamic_metadata: Option<Map<String, Json>>,
}

/// Why a request was denied: the label in logs and metrics. The detail (which error) goes
/// to the decision log, never into a reason, so the labels are a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// 400: the request could not be read.
    BadRequest,
    /// 401: no token.
    MissingToken,
    /// 401: a token that did not verify.
    InvalidToken,
    /// 403: the policy said no.
    Policy,
    /// 403: the policy's answer was undefined or malformed; failing closed.
    PolicyResult,
    /// 403: a step failed (evaluation, a cache key, minting); failing closed.
    Internal,
    /// 403: evaluation ran past `policy.eval_timeout`; failing closed.
    EvalTimeout,
    /// 403: the policy allowed without a `grant` while minting, and `mint.without_grant` is
    /// `deny`.
    NoGrant,
    /// 503: no policy or keys loaded yet.
    Unavailable,
    /// 403: the route's settings (Envoy's `context_extensions`) name no configured policy.
    RouteConfig,
}

pub const STATUS_BAD_REQUEST: u16 = 400;
pub const STATUS_UNAUTHORIZED: u16 = 401;
pub const STATUS_FORBIDDEN: u16 = 403;
pub const STATUS_UNAVAILABLE: u16 = 503;

// === impl DenyReason ===

impl DenyReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [DenyReason; 10] = [
        DenyReason::BadRequest,
        DenyReason::MissingToken,
        DenyReason::InvalidToken,
        DenyReason::Policy,
        DenyReason::PolicyResult,
        DenyReason::Internal,
        DenyReason::EvalTimeout,
        DenyReason::NoGrant,
        DenyReason::Unavailable,
        DenyReason::RouteConfig,
    ];

    /// A short, stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            DenyReason::BadRequest => "bad_request",
            DenyReason::MissingToken => "missing_token",
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::Policy => "policy",
            DenyReason::PolicyResult => "policy_result",
            DenyReason::Internal => "internal_error",
            DenyReason::EvalTimeout => "eval_timeout",
            DenyReason::NoGrant => "no_grant",
            DenyReason::Unavailable => "unavailable",
            DenyReason::RouteConfig => "route_config",
        }
    }
}

/// The response header that tells the client the would-be decision under `policy.dry_run`.
pub const DRY_RUN_HEADER: &str = "x-onbehalf-dry-run";

// === impl Decision ===

impl Decision {
    /// The would-be decision in `DRY_RUN_HEADER`: `allow`, or `deny` with status and reason.
    pub fn dry_run_label(&self) -> String {
        match self {
            Decision::Allow(_) => "allow".into(),
            Decision::Deny(d) => format!("deny; status={}; reason={}", d.status, d.reason.label()),
        }
    }

    /// What `policy.dry_run` answers instead: the request passes with the would-be decision
    /// in `DRY_RUN_HEADER`. A denial passes unchanged (none of the policy's header or query
    /// changes of an allow, which it did not make), keeping its dynamic metadata.
    pub fn dry_run(&self) -> Decision {
        let mut allow = match self {
            Decision::Allow(a) => a.clone(),
            Decision::Deny(d) => Allow {
                dynamic_metadata: d.dynamic_metadata.clone(),
                ..Allow::default()
            },
        };
        allow
            .response_headers_to_add
            .push(set(DRY_RUN_HEADER, self.dry_run_label()));
        Decision::Allow(allow)
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// A denial whose answer says no more than its reason (403s, 503, a missing token).
    pub fn deny(reason: DenyReason) -> Decision {
        let body = match reason {
            DenyReason::Unavailable => json!({"error": "temporarily_unavailable",
                "error_description": "the authorizer is not ready; retry shortly"}),
            DenyReason::MissingToken => {
                return Decision::unauthenticated(reason, &AuthnError::Missing);
            }
            _ => {
                json!({"error": "access_denied", "error_description": "the request is not allowed"})
            }
        };
        let status = match reason {
            DenyReason::Unavailable => STATUS_UNAVAILABLE,
            DenyReason::BadRequest => STATUS_BAD_REQUEST,
            DenyReason::MissingToken | DenyReason::InvalidToken => STATUS_UNAUTHORIZED,
            _ => STATUS_FORBIDDEN,
        };
        Decision::Deny(Deny {
            status,
            reason,
            headers: vec![content_type_json()],
            body: body.to_string(),
            own_body: true,
            dynamic_metadata: None,
        })
    }

    /// 400: the request could not be read; the body says why.
    pub fn bad_request(description: &str) -> Decision {
        Decision::Deny(Deny {
            status: STATUS_BAD_REQUEST,
            reason: DenyReason::BadRequest,
            headers: vec![content_type_json()],
            body: json!({"error": "invalid_request", "error_description": description}).to_string(),
            own_body: true,
            dynamic_metadata: None,
        })
    }

    /// 401 with an RFC 6750 challenge: no token, or one that did not verify (the error text
    /// is safe to show the client).
    pub fn invalid_token(e: &AuthnError) -> Decision {
        let reason = match e {
            AuthnError::Missing => DenyReason::MissingToken,
            _ => DenyReason::InvalidToken,
        };
        Decision::unauthenticated(reason, e)
    }

    fn unauthenticated(reason: DenyReason, e: &AuthnError) -> Decision {
        // RFC 6750 §3: no error code when the request carried no credentials at all.
        let challenge = match e {
            AuthnError::Missing => "Bearer".to_string(),
            e => format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                e.to_string().replace('"', "'")
            ),
        };
        Decision::Deny(Deny {
            status: STATUS_UNAUTHORIZED,
            reason,
            headers: vec![content_type_json(), set("www-authenticate", challenge)],
            body: json!({"error": "invalid_token", "error_description": e.to_string()}).to_string(),
            own_body: true,
            dynamic_metadata: None,
        })
    }

    /// The decision for a policy verdict.
    pub fn from_verdict(v: Verdict) -> Decision {
        if v.allowed {
            return Decision::Allow(Allow {
                headers: v.headers,
                headers_to_remove: v.request_headers_to_remove,
                response_headers_to_add: v.response_headers_to_add,
                query_parameters_to_set: v.query_parameters_to_set,
                query_parameters_to_remove: v.query_parameters_to_remove,
                dynamic_metadata: v.dynamic_metadata,
                grant: v.grant,
            });
        }
        let mut headers = v.headers;
        if !v.insufficient_scope.is_empty() {
            headers.push(set(
                "www-authenticate",
                format!(
                    "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                    v.insufficient_scope.join(" ").replace('"', "'")
                ),
            ));
        }
        let own_body = v.body.is_none();
        let body = match v.body {
            Some(body) => body,
            None => {
                if !headers.iter().any(|h| h.name == "content-type") {
                    headers.push(content_type_json());
                }
                match v.insufficient_scope.is_empty() {
                    true => json!({"error": "access_denied",
                                   "error_description": "the request is not allowed"}),
                    false => json!({"error": "insufficient_scope",
                                    "error_description": "the token lacks a required scope",
                                    "scope": v.insufficient_scope.join(" ")}),
                }
                .to_string()
            }
        };
        Decision::Deny(Deny {
            status: v.http_status.unwrap_or(STATUS_FORBIDDEN),
            reason: DenyReason::Policy,
            headers,
            body,
            own_body,
            dynamic_metadata: v.dynamic_metadata,
        })
    }

    /// The Envoy response. `identity` headers are set last with overwrite semantics and
    /// removed from the policy's own mutations, so neither a client nor a policy can forge them.
    pub fn to_check_response(&self, identity: &[(String, Option<String>)]) -> CheckResponse {
        match self {
            Decision::Allow(a) => {
                // Header names are case-insensitive: `X-Onbehalf-Subject` is the same header.
                let is_identity =
                    |name: &str| identity.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
                let mut headers: Vec<HeaderValueOption> = a
                    .headers
                    .iter()
                    .filter(|h| !is_identity(&h.name))
                    .map(header_option)
                    .collect();
                let mut headers_to_remove: Vec<String> = a
                    .headers_to_remove
                    .iter()
                    .filter(|h| !is_identity(h))
                    .cloned()
                    .collect();
                for (name, value) in identity {
                    match value {
                        Some(v) => headers.push(header_option(&set(name, v.clone()))),
                        None => headers_to_remove.push(name.clone()),
                    }
                }
                CheckResponse {
                    status: Some(rpc::Status {
                        code: tonic::Code::Ok as i32,
                        ..Default::default()
                    }),
                    dynamic_metadata: a.dynamic_metadata.as_ref().map(to_struct),
                    http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                        headers,
                        headers_to_remove,
                        response_headers_to_add: a
                            .response_headers_to_add
                            .iter()
                            .map(header_option)
                            .collect(),
                        query_parameters_to_set: a
                            .query_parameters_to_set
                            .iter()
                            .map(|(k, v)| QueryParameter {
                                key: k.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                        query_parameters_to_remove: a.query_parameters_to_remove.clone(),
                        ..Default::default()
                    })),
                }
            }
            Decision::Deny(d) => {
                let code = match d.status {
                    STATUS_UNAUTHORIZED => tonic::Code::Unauthenticated,
                    _ => tonic::Code::PermissionDenied,
                };
                CheckResponse {
                    status: Some(rpc::Status {
                        code: code as i32,
                        message: d.reason.label().to_string(),
                        ..Default::default()
                    }),
                    dynamic_metadata: d.dynamic_metadata.as_ref().map(to_struct),
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: i32::from(d.status),
                        }),
                        headers: d.headers.iter().map(header_option).collect(),
                        body: d.body.clone(),
                    })),
                }
            }
        }
    }
}

fn set(name: &str, value: String) -> HeaderOp {
    HeaderOp {
        name: name.to_string(),
        value,
        action: AppendAction::OverwriteIfExistsOrAdd,
    }
}

fn content_type_json() -> HeaderOp {
    set("content-type", "application/json".into())
}

fn header_option(h: &HeaderOp) -> HeaderValueOption {
    let action = match h.action {
        AppendAction::AppendIfExistsOrAdd => HeaderAppendAction::AppendIfExistsOrAdd,
        AppendAction::AddIfAbsent => HeaderAppendAction::AddIfAbsent,
        AppendAction::OverwriteIfExistsOrAdd => HeaderAppendAction::OverwriteIfExistsOrAdd,
        AppendAction::OverwriteIfExists => HeaderAppendAction::OverwriteIfExists,
    };
    HeaderValueOption {
        header: Some(HeaderValue {
            key: h.name.clone(),
            value: h.value.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

fn to_struct(m: &Map<String, Json>) -> pbuf::Struct {
    pbuf::Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &Json) -> pbuf::Value {
    use pbuf::value::Kind;
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(pbuf::ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(to_struct(o)),
    };
    pbuf::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests;
