//! The policy's answer -> `Verdict`.
//!
//! A boolean, or an object as OPA-Envoy accepts (`allowed`, `headers`,
//! `request_headers_to_remove`, `response_headers_to_add`, `query_parameters_to_set`,
//! `query_parameters_to_remove`, `http_status`, `body`, `dynamic_metadata`), plus onbehalf's
//! `grant` and `insufficient_scope`. Anything else — undefined, another type, a field of the
//! wrong shape — is a `VerdictError`, and the request is denied.

use std::time::Duration;

use regorus::Value;
use serde_json::{Map, Value as Json};

/// What the policy decided, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// On allow: headers for the upstream request. On deny: headers of the denial response.
    pub headers: Vec<HeaderOp>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderOp>,
    pub query_parameters_to_set: Vec<(String, String)>,
    pub query_parameters_to_remove: Vec<String>,
    /// Status of a denial (default 403).
    pub http_status: Option<u16>,
    /// Body of a denial.
    pub body: Option<String>,
    pub dynamic_metadata: Option<Map<String, Json>>,
    /// What an upstream token minted for this request may carry.
    pub grant: Option<Grant>,
    /// Scopes the request lacked; a denial then says `error="insufficient_scope"`.
    pub insufficient_scope: Vec<String>,
}

/// One header to set, with Envoy's `append_action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOp {
    pub name: String,
    pub value: String,
    pub action: AppendAction,
}

/// Envoy's `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// Add a value, keeping existing ones.
    AppendIfExistsOrAdd,
    /// Add only when the header is absent.
    AddIfAbsent,
    /// Replace existing values, or add.
    OverwriteIfExistsOrAdd,
    /// Replace existing values; do nothing when absent.
    OverwriteIfExists,
}

/// The `grant` of a result: what a just-in-time upstream token may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scopes: Vec<String>,
    /// `aud` of the minted token; empty: the configured default.
    pub audience: Vec<String>,
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerdictError {
    #[error("the policy result is undefined")]
    Undefined,
    #[error("the policy result is malformed: {0}")]
    Malformed(String),
}

// === impl Verdict ===

impl TryFrom<&Value> for Verdict {
    type Error = VerdictError;

    fn try_from(value: &Value) -> Result<Self, Self::Error> {
        match value {
            Value::Undefined => Err(VerdictError::Undefined),
            Value::Bool(allowed) => Ok(Verdict {
                allowed: *allowed,
                ..Verdict::default()
            }),
            Value::Object(_) => {
                let json = serde_json::to_value(value).map_err(|e| bad(e.to_string()))?;
                match json {
                    Json::Object(map) => Verdict::from_object(&map),
                    _ => Err(bad("expected an object".into())),
                }
            }
            other => Err(bad(format!(
                "expected a boolean or an object, got {}",
                type_name(other)
            ))),
        }
    }
}

impl Verdict {
    fn from_object(m: &Map<String, Json>) -> Result<Verdict, VerdictError> {
        let allowed = match m.get("allowed") {
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(bad("`allowed` must be a boolean".into())),
            None => return Err(bad("the object has no `allowed` field".into())),
        };
        let http_status = match m.get("http_status") {
            None => None,
            Some(v) => {
                let code = v
                    .as_u64()
                    .filter(|c| (200..=599).contains(c))
                    .and_then(|c| u16::try_from(c).ok())
                    .ok_or_else(|| bad("`http_status` must be an HTTP status code".into()))?;
                Some(code)
            }
        };
        let body = match m.get("body") {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad("`body` must be a string".into())),
        };
        let dynamic_metadata = match m.get("dynamic_metadata") {
            None => None,
            Some(Json::Object(o)) => Some(o.clone()),
            Some(_) => return Err(bad("`dynamic_metadata` must be an object".into())),
        };
        Ok(Verdict {
            allowed,
            headers: header_ops(m.get("headers"), "headers")?,
            request_headers_to_remove: string_list(
                m.get("request_headers_to_remove"),
                "request_headers_to_remove",
            )?,
            response_headers_to_add: header_ops(
                m.get("response_headers_to_add"),
                "response_headers_to_add",
            )?,
            query_parameters_to_set: query_params(m.get("query_parameters_to_set"))?,
            query_parameters_to_remove: string_list(
                m.get("query_parameters_to_remove"),
                "query_parameters_to_remove",
            )?,
            http_status,
            body,
            dynamic_metadata,
            grant: m.get("grant").map(grant).transpose()?,
            insufficient_scope: match m.get("insufficient_scope") {
                Some(Json::String(s)) => vec![s.clone()],
                other => string_list(other, "insufficient_scope")?,
            },
        })
    }
}

fn bad(message: String) -> VerdictError {
    VerdictError::Malformed(message)
}

/// `{"name": "v"}`, `{"name": ["v1", "v2"]}` (one header per value) or
/// `{"name": {"values": [...], "append_action": "ADD_IF_ABSENT"}}` — or, as OPA-Envoy also
/// accepts, a list of such objects, read in order (`[{"x-rep": "a"}, {"x-rep": "b"}]` repeats
/// a name). Without an action a name's first value overwrites and its later ones append, so a
/// client can never smuggle a value through and repeated values keep their order.
fn header_ops(v: Option<&Json>, field: &str) -> Result<Vec<HeaderOp>, VerdictError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let shape = || {
        bad(format!(
            "`{field}` must be an object of header names, or a list of such objects"
        ))
    };
    let maps: Vec<&Map<String, Json>> = match v {
        Json::Object(map) => vec![map],
        Json::Array(list) => list
            .iter()
            .map(|m| m.as_object().ok_or_else(shape))
            .collect::<Result<_, _>>()?,
        _ => return Err(shape()),
    };
    let mut ops = Vec::new();
    let mut named = std::collections::HashSet::new();
    for (name, value) in maps.into_iter().flatten() {
        let name = name.to_ascii_lowercase();
        if !valid_header_name(&name) {
            return Err(bad(format!(
                "`{field}` has an invalid header name `{name}`"
            )));
        }
        let (values, action) = match value {
            Json::Object(o) => {
                let values = match (o.get("value"), o.get("values")) {
                    (Some(v), None) => header_values(v, field, &name)?,
                    (None, Some(v)) => header_values(v, field, &name)?,
                    _ => {
                        return Err(bad(format!(
                            "`{field}.{name}` needs exactly one of `value` or `values`"
                        )));
                    }
                };
                let action = match o.get("append_action") {
                    None => None,
                    Some(Json::String(a)) => Some(append_action(a).ok_or_else(|| {
                        bad(format!("`{field}.{name}.append_action` `{a}` is unknown"))
                    })?),
                    Some(_) => {
                        return Err(bad(format!(
                            "`{field}.{name}.append_action` must be a string"
                        )));
                    }
                };
                (values, action)
            }
            other => (header_values(other, field, &name)?, None),
        };
        for value in values {
            // Any earlier value of the name, with an action or not, makes later defaults append.
            let first = named.insert(name.clone());
            let action = action.unwrap_or(match first {
                true => AppendAction::OverwriteIfExistsOrAdd,
                false => AppendAction::AppendIfExistsOrAdd,
            });
            ops.push(HeaderOp {
                name: name.clone(),
                value,
                action,
            });
        }
    }
    Ok(ops)
}

fn header_values(v: &Json, field: &str, name: &str) -> Result<Vec<String>, VerdictError> {
    let values = match v {
        Json::String(s) => vec![s.clone()],
        Json::Array(list) => list
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(format!("`{field}.{name}` must hold strings")))?,
        _ => {
            return Err(bad(format!(
                "`{field}.{name}` must be a string or a list of strings"
            )));
        }
    };
    if values
        .iter()
        .any(|s| s.bytes().any(|b| b.is_ascii_control() && b != b'\t'))
    {
        return Err(bad(format!("`{field}.{name}` has a control character")));
    }
    Ok(values)
}

fn append_action(name: &str) -> Option<AppendAction> {
    Some(match name.to_ascii_uppercase().as_str() {
        "APPEND_IF_EXISTS_OR_ADD" => AppendAction::AppendIfExistsOrAdd,
        "ADD_IF_ABSENT" => AppendAction::AddIfAbsent,
        "OVERWRITE_IF_EXISTS_OR_ADD" => AppendAction::OverwriteIfExistsOrAdd,
        "OVERWRITE_IF_EXISTS" => AppendAction::OverwriteIfExists,
        _ => return None,
    })
}

fn string_list(v: Option<&Json>, field: &str) -> Result<Vec<String>, VerdictError> {
    match v {
        None => Ok(Vec::new()),
        Some(Json::Array(list)) => list
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(format!("`{field}` must be a list of strings"))),
        Some(_) => Err(bad(format!("`{field}` must be a list of strings"))),
    }
}

fn query_params(v: Option<&Json>) -> Result<Vec<(String, String)>, VerdictError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let field = "query_parameters_to_set";
    let map = v
        .as_object()
        .ok_or_else(|| bad(format!("`{field}` must be an object")))?;
    let mut out = Vec::new();
    for (k, v) in map {
        match v {
            Json::String(s) => out.push((k.clone(), s.clone())),
            Json::Array(list) => {
                for x in list {
                    let s = x
                        .as_str()
                        .ok_or_else(|| bad(format!("`{field}.{k}` must hold strings")))?;
                    out.push((k.clone(), s.to_string()));
                }
            }
            _ => return Err(bad(format!("`{field}.{k}` must be a string or a list"))),
        }
    }
    Ok(out)
}

fn grant(v: &Json) -> Result<Grant, VerdictError> {
    let o = v
        .as_object()
        .ok_or_else(|| bad("`grant` must be an object".into()))?;
    let ttl = match o.get("ttl") {
        None => None,
        Some(Json::String(s)) => Some(
            s.parse::<crate::config::Interval>()
                .map_err(|e| bad(format!("`grant.ttl`: {e}")))?
                .0,
        ),
        Some(_) => return Err(bad("`grant.ttl` must be a duration string like 60s".into())),
    };
    let audience = match o.get("audience") {
        None => Vec::new(),
        Some(Json::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Json::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|x| x.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("`grant.audience` must hold non-empty strings".into()))?,
        Some(_) => {
            return Err(bad(
                "`grant.audience` must be a non-empty string or list of strings".into(),
            ));
        }
    };
    Ok(Grant {
        scopes: string_list(o.get("scopes"), "grant.scopes")?,
        audience,
        ttl,
    })
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    }
}
