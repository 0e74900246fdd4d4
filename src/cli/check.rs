//! `onbehalf check`: one request, decided offline through the same path as `serve`.

use std::collections::HashMap;
use std::path::Path;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::decision::Decision;
use crate::pipeline::Authorizer;

/// A request as a policy author writes it down.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    /// A bearer token; becomes `authorization: Bearer <token>` unless that header is given.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a request description: {message}")]
    Parse { path: String, message: String },
    #[error("header `{0}` is not of the form `name: value`")]
    Header(String),
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}

// === impl RequestSpec ===

impl RequestSpec {
    pub fn from_file(path: &Path) -> Result<RequestSpec, CheckError> {
        let text = std::fs::read_to_string(path).map_err(|source| CheckError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| CheckError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Adds a `name: value` header given on the command line.
    pub fn add_header(&mut self, raw: &str) -> Result<(), CheckError> {
        let (name, value) = raw
            .split_once(':')
            .filter(|(n, _)| !n.trim().is_empty())
            .ok_or_else(|| CheckError::Header(raw.to_string()))?;
        self.headers
            .insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        Ok(())
    }

    /// The CheckRequest Envoy would send for this request.
    pub fn to_check_request(&self, token_header: &str) -> CheckRequest {
        let mut headers: HashMap<String, String> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(token) = &self.token {
            headers
                .entry(token_header.to_string())
                .or_insert_with(|| format!("Bearer {token}"));
        }
        let host = self
            .host
            .clone()
            .or_else(|| headers.get("host").cloned())
            .unwrap_or_else(|| "localhost".into());
        headers.insert(":authority".into(), host.clone());
        headers.insert(":method".into(), self.method.clone());
        headers.insert(":path".into(), self.path.clone());
        let body = self.body.clone().unwrap_or_default();
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        id: "onbehalf-check".into(),
                        method: self.method.clone(),
                        path: self.path.clone(),
                        host,
                        scheme: "http".into(),
                        protocol: "HTTP/1.1".into(),
                        size: i64::try_from(body.len()).unwrap_or(i64::MAX),
                        body,
                        headers,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
    }
}

/// Decides the request and returns the report printed by `onbehalf check`, and whether it
/// was allowed.
pub async fn run(authorizer: &Authorizer, spec: &RequestSpec, token_header: &str) -> (Json, bool) {
    let request = spec.to_check_request(token_header);
    let (response, outcome) = crate::grpc::respond(authorizer, &request).await;
    let allowed = outcome.decision.is_allow();
    let mut report = serde_json::Map::new();
    report.insert(
        "decision".into(),
        json!(if allowed { "allow" } else { "deny" }),
    );
    report.insert("response".into(), describe(&response));
    if let Some(snapshot) = authorizer.policies().load() {
        let engine = match snapshot.policies.uses_vm() {
            true => "register VM",
            false => "interpreter (always off the serving threads)",
        };
        report.insert("policy_engine".into(), json!(engine));
    }
    if let Decision::Deny(d) = &*outcome.decision {
        report.insert("reason".into(), json!(d.reason.label()));
    }
    if let Some(input) = &outcome.input {
        report.insert(
            "input".into(),
            serde_json::to_value(input).unwrap_or(Json::Null),
        );
    }
    let result = match &outcome.result {
        Some(r) if *r != regorus::Value::Undefined => serde_json::to_value(r).unwrap_or(Json::Null),
        Some(_) => json!("undefined"),
        None => Json::Null,
    };
    report.insert("result".into(), result);
    (Json::Object(report), allowed)
}

/// The response as Envoy would act on it: status, headers set and removed, body.
fn describe(response: &CheckResponse) -> Json {
    let header_list = |hs: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| json!({"name": h.key, "value": h.value}))
            .collect::<Vec<_>>()
    };
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => json!({
            "status": 200,
            "upstream_headers_set": header_list(&ok.headers),
            "upstream_headers_removed": ok.headers_to_remove,
            "response_headers_added": header_list(&ok.response_headers_to_add),
        }),
        Some(HttpResponse::DeniedResponse(d)) => json!({
            "status": d.status.as_ref().map_or(403, |s| s.code),
            "headers": header_list(&d.headers),
            "body": serde_json::from_str::<Json>(&d.body).unwrap_or_else(|_| json!(d.body)),
        }),
        Some(HttpResponse::ErrorResponse(_)) | None => Json::Null,
    }
}
