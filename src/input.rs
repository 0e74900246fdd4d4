//! CheckRequest -> `CheckInput` (validated once, at the edge) -> the Rego input document.
//!
//! The document is OPA-Envoy's: `attributes` as OPA-Envoy writes a CheckRequest (every
//! message's set fields by lowerCamelCase name, default values and empty maps left out,
//! integers and enums as numbers, bytes in base64 — not protojson, whose int64 are strings),
//! `parsed_path`, `parsed_query`, `parsed_body` (`null` when there is none),
//! `truncated_body`, `source_principal`, `version`; then onbehalf's `subject`, `actor`,
//! `delegation` and `token`. It is built as a `regorus::Value` directly. Where onbehalf
//! differs on purpose is listed in docs/policies.md.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, OnceLock};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use envoy_types::pb::google::protobuf as pbuf;
use percent_encoding::percent_decode_str;
use regorus::Value;

use crate::identity::{Delegation, Party, TokenInfo};
pub use grpc::{GrpcBodies, GrpcBody};

/// Envoy sets this header when `with_request_body` cut the body at `max_request_bytes`.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the check request has no HTTP request attributes")]
    NoHttpRequest,
    #[error("a path segment is not valid UTF-8 once percent-decoded")]
    PathEncoding,
    #[error("the request body is not valid JSON")]
    Body,
    #[error("the content-length header is not a number")]
    ContentLength,
    #[error("the multipart body is malformed: {0}")]
    Multipart(&'static str),
    #[error("a gRPC request's path is not /package.Service/Method")]
    GrpcPath,
    #[error("the gRPC body is shorter than its 5-byte message header")]
    GrpcFrame,
    #[error("the gRPC body is not the method's request message")]
    GrpcMessage,
}

/// The parts of a CheckRequest that onbehalf reads, validated. Borrows the request: nothing is
/// copied that a cached decision does not need (`attributes` is built on first use).
#[derive(Debug)]
pub struct CheckInput<'a> {
    attrs: &'a AttributeContext,
    http: &'a attribute_context::HttpRequest,
    /// Lower-case header names; repeated headers joined with `,` as Envoy does.
    headers: Cow<'a, HashMap<String, String>>,
    attributes: OnceLock<Value>,
    parsed_path: Value,
    parsed_query: Value,
    parsed_body: Option<Value>,
    truncated_body: bool,
}

/// The parts of the input document that depend on the token alone: built while a token is
/// verified, and again from its claims when a cached token meets a decision not cached yet.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenParts {
    subject: Value,
    actor: Value,
    delegation: Value,
    token: Value,
}

/// One step of a static path below `input`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Key(String),
    Index(u64),
}

/// Top-level keys of the input document that come from the token.
const TOKEN_KEYS: [&str; 4] = ["subject", "actor", "delegation", "token"];
/// Top-level keys that come from the request.
const REQUEST_KEYS: [&str; 7] = [
    "attributes",
    "parsed_path",
    "parsed_query",
    "parsed_body",
    "truncated_body",
    "source_principal",
    "version",
];

static VERSION: LazyLock<Value> =
    LazyLock::new(|| object([("encoding", "protojson".into()), ("ext_authz", "v3".into())]));

// === impl CheckInput ===

impl<'a> TryFrom<&'a CheckRequest> for CheckInput<'a> {
    type Error = InputError;

    /// Reads a request without decoding gRPC bodies.
    fn try_from(req: &'a CheckRequest) -> Result<Self, Self::Error> {
        CheckInput::read(req, None)
    }
}

impl<'a> CheckInput<'a> {
    /// Reads and validates a request; `grpc` decodes the bodies of gRPC calls
    /// (`policy.proto_descriptors`).
    pub fn read(req: &'a CheckRequest, grpc: Option<&GrpcBodies>) -> Result<Self, InputError> {
        let attrs = req.attributes.as_ref().ok_or(InputError::NoHttpRequest)?;
        let http = attrs
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .ok_or(InputError::NoHttpRequest)?;
        let headers = request_headers(http);
        let (path_only, query) = split_target(&http.path);
        let parsed_path = parse_path(path_only)?;
        let parsed_query = parse_query(query);
        let mut truncated_body = headers
            .get(PARTIAL_BODY_HEADER)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || shorter_than_declared(http, headers.get("content-length"))?;
        let content_type = headers.get("content-type").map(String::as_str);
        let parsed_body = match truncated_body {
            true => None,
            // As OPA-Envoy: only what Envoy sent as raw bytes (`pack_as_bytes`) is decoded.
            // JSON first, as OPA-Envoy matches them.
            false
                if content_type.is_some_and(|c| {
                    c.contains("application/grpc") && !c.contains("application/json")
                }) =>
            {
                match (grpc, http.raw_body.is_empty()) {
                    (Some(grpc), false) => {
                        let path: Vec<&str> = match &parsed_path {
                            Value::Array(a) => a
                                .iter()
                                .filter_map(|s| s.as_string().ok())
                                .map(|s| s.as_ref())
                                .collect(),
                            _ => Vec::new(),
                        };
                        match grpc.decode(&path, &http.raw_body)? {
                            GrpcBody::Parsed(v) => Some(v),
                            GrpcBody::Unknown => None,
                            GrpcBody::Truncated => {
                                truncated_body = true;
                                None
                            }
                        }
                    }
                    _ => None,
                }
            }
            false => parse_body(http, content_type)?,
        };
        Ok(CheckInput {
            attrs,
            http,
            headers,
            attributes: OnceLock::new(),
            parsed_path,
            parsed_query,
            parsed_body,
            truncated_body,
        })
    }
}

/// Prefix of onbehalf's per-route settings in Envoy's `context_extensions`.
pub const ROUTE_SETTING_PREFIX: &str = "onbehalf.";

/// The per-route setting `name` (`onbehalf.<name>` in the route's `context_extensions`, set
/// with `ExtAuthzPerRoute.check_settings`).
pub fn route_setting<'a>(req: &'a CheckRequest, name: &str) -> Option<&'a str> {
    setting_in(req.attributes.as_ref()?, name)
}

fn setting_in<'a>(attrs: &'a AttributeContext, name: &str) -> Option<&'a str> {
    attrs
        .context_extensions
        .iter()
        .find(|(k, _)| k.strip_prefix(ROUTE_SETTING_PREFIX) == Some(name))
        .map(|(_, v)| v.as_str())
}

/// onbehalf's per-route settings and the values each takes (`None`: any).
const ROUTE_SETTINGS: [(&str, Option<&[&str]>); 4] = [
    ("policy", None),
    ("mint_audience", None),
    ("dry_run", Some(&["true", "false"])),
    ("authn_required", Some(&["true", "false"])),
];

impl CheckInput<'_> {
    /// Every `onbehalf.` key of the route's `context_extensions` is a known setting with a
    /// value it takes; the error names the first that is not.
    pub fn check_route_settings(&self) -> Result<(), String> {
        for (key, value) in &self.attrs.context_extensions {
            let Some(name) = key.strip_prefix(ROUTE_SETTING_PREFIX) else {
                continue;
            };
            match ROUTE_SETTINGS.iter().find(|(known, _)| *known == name) {
                None => return Err(format!("{key} is not a setting of onbehalf")),
                Some((_, Some(values))) if !values.contains(&value.as_str()) => {
                    return Err(format!("{key}: {value:?} is not one of {values:?}"));
                }
                Some((_, None)) if value.is_empty() => {
                    return Err(format!("{key} is empty"));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The per-route setting `name` (see `route_setting`).
    pub fn route_setting(&self, name: &str) -> Option<&str> {
        setting_in(self.attrs, name)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn method(&self) -> &str {
        &self.http.method
    }

    /// The request path without its query string.
    pub fn path(&self) -> &str {
        split_target(&self.http.path).0
    }

    /// The downstream client's IP address, as Envoy saw it.
    pub fn source_address(&self) -> Option<&str> {
        use core::address::Address;
        let address = self.attrs.source.as_ref()?.address.as_ref()?;
        match address.address.as_ref()? {
            Address::SocketAddress(s) => Some(s.address.as_str()).filter(|a| !a.is_empty()),
            _ => None,
        }
    }

    fn attributes(&self) -> &Value {
        self.attributes
            .get_or_init(|| attributes(self.attrs, &self.headers))
    }

    /// The Rego input document for this request, with its token's parts.
    pub fn document(&self, parts: TokenParts) -> Value {
        let mut doc = BTreeMap::new();
        for key in REQUEST_KEYS {
            if let Some(v) = self.request_part(key) {
                put(&mut doc, key, v.into_owned());
            }
        }
        put(&mut doc, "subject", parts.subject);
        put(&mut doc, "actor", parts.actor);
        put(&mut doc, "delegation", parts.delegation);
        put(&mut doc, "token", parts.token);
        Value::from(doc)
    }

    fn request_part(&self, key: &str) -> Option<Cow<'_, Value>> {
        Some(match key {
            "attributes" => Cow::Borrowed(self.attributes()),
            "parsed_path" => Cow::Borrowed(&self.parsed_path),
            "parsed_query" => Cow::Borrowed(&self.parsed_query),
            // Always there, `null` when there is no body to parse (as OPA-Envoy writes it).
            "parsed_body" => match &self.parsed_body {
                Some(body) => Cow::Borrowed(body),
                None => Cow::Owned(Value::Null),
            },
            "truncated_body" => Cow::Owned(Value::from(self.truncated_body)),
            "source_principal" => {
                // Top level, as OPA-Envoy adds it, when the source has a principal.
                let principal = &self.attrs.source.as_ref()?.principal;
                if principal.is_empty() {
                    return None;
                }
                Cow::Owned(Value::from(principal.as_str()))
            }
            "version" => Cow::Borrowed(&*VERSION),
            _ => return None,
        })
    }

    /// Writes what the document holds at `path` into a decision-cache key: the value's JSON,
    /// or, where the path leads nowhere, how far it led and what it met there. Only
    /// request-derived paths are written here (the token-derived ones go through
    /// `TokenParts::feed_key`); the common attribute paths are read from the request without
    /// building `attributes`, writing the same bytes.
    pub fn feed_key(&self, path: &[Segment], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let Some((Segment::Key(top), rest)) = path.split_first() else {
            // The whole input: every request part, in order.
            for key in REQUEST_KEYS {
                self.feed_key(&[Segment::Key(key.into())], out)?;
            }
            return Ok(());
        };
        if top == "attributes"
            && let Some(fast) = self.attribute_fast(rest)
        {
            return write_value(fast, out);
        }
        match self.request_part(top) {
            Some(v) => write_value(lookup(&v, rest).map_err(Missing::below), out),
            None => write_value::<Value>(Err(Missing::ROOT), out),
        }
    }

    /// `attributes.request.http.{method,path,host,scheme,protocol,id}` and
    /// `attributes.request.http.headers.<name>`, straight from the request (empty strings
    /// are left out of the document, as in protojson; `http` is always there, `headers` when
    /// there is one).
    fn attribute_fast(&self, rest: &[Segment]) -> Option<Result<&str, Missing>> {
        let [Segment::Key(a), Segment::Key(b), tail @ ..] = rest else {
            return None;
        };
        if a != "request" || b != "http" {
            return None;
        }
        let h = self.http;
        // `attributes.request.http` leads to an object: three steps.
        let in_http = Missing {
            depth: 3,
            found: b'o',
        };
        fn field(s: &str, missing: Missing) -> Option<Result<&str, Missing>> {
            Some(Some(s).filter(|s| !s.is_empty()).ok_or(missing))
        }
        match tail {
            [Segment::Key(f)] => match f.as_str() {
                "method" => field(&h.method, in_http),
                "path" => field(&h.path, in_http),
                "host" => field(&h.host, in_http),
                "scheme" => field(&h.scheme, in_http),
                "protocol" => field(&h.protocol, in_http),
                "id" => field(&h.id, in_http),
                _ => None,
            },
            [Segment::Key(headers), Segment::Key(name)] if headers == "headers" => {
                let missing = match self.headers.is_empty() {
                    true => in_http,
                    false => Missing {
                        depth: 4,
                        found: b'o',
                    },
                };
                Some(
                    self.headers
                        .get(name.as_str())
                        .map(String::as_str)
                        .ok_or(missing),
                )
            }
            _ => None,
        }
    }
}

// === impl TokenParts ===

impl TokenParts {
    /// The parts of a request without a token (`authn.required: false`): all null.
    pub fn anonymous() -> Self {
        TokenParts {
            subject: Value::Null,
            actor: Value::Null,
            delegation: Value::Null,
            token: Value::Null,
        }
    }

    /// The token-derived parts of the document, built once.
    pub fn build(delegation: &Delegation, token: &TokenInfo) -> Self {
        let t = token;
        TokenParts {
            subject: party(&delegation.subject),
            actor: delegation.actor().map_or(Value::Null, party),
            delegation: object([
                (
                    "chain",
                    Value::from(delegation.chain.iter().map(party).collect::<Vec<_>>()),
                ),
                ("depth", Value::from(delegation.depth())),
                (
                    "may_act",
                    delegation.may_act.as_ref().map_or(Value::Null, |m| {
                        Value::from(serde_json::Value::Object(m.claims.clone()))
                    }),
                ),
            ]),
            token: object([
                ("issuer", Value::from(t.issuer.as_str())),
                ("audience", strings(&t.audience)),
                ("scopes", strings(&t.scopes)),
                ("expires_at", t.expires_at.map_or(Value::Null, Value::from)),
                ("jti", opt_str(t.jti.as_deref())),
                ("type", opt_str(t.kind.as_deref())),
            ]),
        }
    }

    fn part(&self, key: &str) -> Option<&Value> {
        Some(match key {
            "subject" => &self.subject,
            "actor" => &self.actor,
            "delegation" => &self.delegation,
            "token" => &self.token,
            _ => return None,
        })
    }

    /// Writes what the token-derived parts hold at `path` (see `CheckInput::feed_key`);
    /// returns false for a request-derived path.
    pub fn feed_key(&self, path: &[Segment], out: &mut Vec<u8>) -> Result<bool, serde_json::Error> {
        let Some((Segment::Key(top), rest)) = path.split_first() else {
            for key in TOKEN_KEYS {
                self.feed_key(&[Segment::Key(key.into())], out)?;
            }
            return Ok(true);
        };
        if !TOKEN_KEYS.contains(&top.as_str()) {
            return Ok(false);
        }
        let found = match self.part(top) {
            Some(v) => lookup(v, rest).map_err(Missing::below),
            None => Err(Missing::ROOT),
        };
        write_value(found, out)?;
        Ok(true)
    }
}

/// Whether `path` lies in the token-derived part of the document (the whole input counts for
/// both parts).
pub fn is_token_path(path: &[Segment]) -> bool {
    matches!(path.first(), Some(Segment::Key(k)) if TOKEN_KEYS.contains(&k.as_str()))
}

/// Where a path of the document leads nowhere: after `depth` steps, at a value of kind
/// `found` (`o`bject, `a`rray, `s`et, `"` string, `n`umber, `b`oolean, `z` null). A key
/// tells "`input.a` is `{}`" from "there is no `input.a`" although `input.a.b` is undefined in
/// both: a policy that binds `x := input.a` and tests `not x.b` answers differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    depth: u32,
    found: u8,
}

impl Missing {
    /// A top-level key the document does not have.
    const ROOT: Missing = Missing {
        depth: 0,
        found: b'o',
    };

    /// The same, one step further from the root (for a lookup below a top-level key).
    fn below(self) -> Missing {
        Missing {
            depth: self.depth + 1,
            ..self
        }
    }
}

/// The value at `path` below `v`, or how far the path led.
fn lookup<'v>(v: &'v Value, path: &[Segment]) -> Result<&'v Value, Missing> {
    let mut node = v;
    for (depth, seg) in path.iter().enumerate() {
        let next = match (node, seg) {
            (Value::Object(o), Segment::Key(k)) => o.get(&Value::from(k.as_str())),
            (Value::Array(a), Segment::Index(i)) => usize::try_from(*i).ok().and_then(|i| a.get(i)),
            (Value::Object(o), Segment::Index(i)) => o.get(&Value::from(*i)),
            _ => None,
        };
        node = next.ok_or(Missing {
            depth: u32::try_from(depth).unwrap_or(u32::MAX),
            found: kind(node),
        })?;
    }
    Ok(node)
}

fn kind(v: &Value) -> u8 {
    match v {
        Value::Object(_) => b'o',
        Value::Array(_) => b'a',
        Value::Set(_) => b's',
        Value::String(_) => b'"',
        Value::Number(_) => b'n',
        Value::Bool(_) => b'b',
        Value::Null => b'z',
        Value::Undefined => b'u',
    }
}

/// JSON with a length prefix, or `U` with how far the path led. A string and its `Value`
/// write the same bytes, so fast and slow lookups of one path agree. A value that cannot be
/// written is an error, never an empty string that another value could share.
fn write_value<T: serde::Serialize + ?Sized>(
    v: Result<&T, Missing>,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    match v {
        Ok(v) => {
            let json = serde_json::to_vec(v)?;
            out.extend_from_slice(&(json.len() as u64).to_be_bytes());
            out.extend_from_slice(&json);
        }
        Err(missing) => {
            out.push(b'U');
            out.extend_from_slice(&missing.depth.to_be_bytes());
            out.push(missing.found);
        }
    }
    Ok(())
}

fn party(p: &Party) -> Value {
    object([
        ("id", Value::from(&*p.id)),
        (
            "claims",
            Value::from(serde_json::Value::Object(p.claims.clone())),
        ),
    ])
}

/// Splits a request target into path and query; a fragment (never sent by clients, but
/// possible in a hand-made request) is dropped.
fn split_target(target: &str) -> (&str, &str) {
    let target = target.split('#').next().unwrap_or_default();
    target.split_once('?').unwrap_or((target, ""))
}

/// Splits the raw path on `/` first and decodes each segment after, so `%2F` stays inside its
/// segment. Empty, `.` and `..` segments are kept as they are: the policy sees what was sent.
fn parse_path(path: &str) -> Result<Value, InputError> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let segments = path
        .split('/')
        .map(|s| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|s| Value::from(s.as_ref()))
                .map_err(|_| InputError::PathEncoding)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::from(segments))
}

/// `name -> [values...]` in the order given, `+` read as a space (HTML form encoding, as
/// OPA-Envoy's Go `url.ParseQuery`).
fn parse_query(query: &str) -> Value {
    let mut map: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        map.entry(k.into_owned())
            .or_default()
            .push(Value::from(v.as_ref()));
    }
    Value::from(
        map.into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn parse_body(
    http: &attribute_context::HttpRequest,
    content_type: Option<&str>,
) -> Result<Option<Value>, InputError> {
    let bytes: &[u8] = match http.raw_body.is_empty() {
        true => http.body.as_bytes(),
        false => &http.raw_body,
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if mime.as_deref() == Some("multipart/form-data") {
        return multipart::parse(bytes, content_type.unwrap_or_default());
    }
    match mime.as_deref() {
        // As OPA-Envoy matches it: `application/json-patch+json` is JSON too.
        Some(m) if m.contains("application/json") => {
            let v: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|_| InputError::Body)?;
            Ok(Some(Value::from(v)))
        }
        Some("application/x-www-form-urlencoded") => {
            Ok(Some(parse_query(&String::from_utf8_lossy(bytes))))
        }
        _ => Ok(None),
    }
}

/// Whether the body Envoy sent is shorter than the request's `content-length`: Envoy cut it at
/// `max_request_bytes` (`allow_partial_message`), and a prefix must never be judged as the
/// whole body. No body sent at all is not a cut one (`with_request_body` is off). A
/// `content-length` that is not a number is an error, as in OPA-Envoy; `-1` means unknown.
fn shorter_than_declared(
    http: &attribute_context::HttpRequest,
    content_length: Option<&String>,
) -> Result<bool, InputError> {
    let sent = match http.raw_body.is_empty() {
        true => http.body.len(),
        false => http.raw_body.len(),
    };
    let Some(declared) = content_length else {
        return Ok(false);
    };
    if sent == 0 {
        return Ok(false);
    }
    let declared: i64 = declared
        .trim()
        .parse()
        .map_err(|_| InputError::ContentLength)?;
    Ok(declared != -1 && u64::try_from(declared).is_ok_and(|d| d > sent as u64))
}

/// Envoy sends headers as a map (names already lower-case), or as a list when
/// `encode_raw_headers` is on. The map is borrowed unless a name needs lower-casing.
fn request_headers(http: &attribute_context::HttpRequest) -> Cow<'_, HashMap<String, String>> {
    if !http.headers.is_empty() {
        if !http
            .headers
            .keys()
            .any(|k| k.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Cow::Borrowed(&http.headers);
        }
        return Cow::Owned(
            http.headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        );
    }
    let mut headers: HashMap<String, String> = HashMap::new();
    for h in http.header_map.iter().flat_map(|m| m.headers.iter()) {
        let value = match h.raw_value.is_empty() {
            true => h.value.clone(),
            false => String::from_utf8_lossy(&h.raw_value).into_owned(),
        };
        headers
            .entry(h.key.to_ascii_lowercase())
            .and_modify(|v| {
                v.push(',');
                v.push_str(&value);
            })
            .or_insert(value);
    }
    Cow::Owned(headers)
}

// === protobuf JSON mapping of AttributeContext ===

fn attributes(a: &AttributeContext, headers: &HashMap<String, String>) -> Value {
    let mut m = BTreeMap::new();
    if let Some(p) = &a.source {
        put(&mut m, "source", peer(p));
    }
    if let Some(p) = &a.destination {
        put(&mut m, "destination", peer(p));
    }
    if let Some(r) = &a.request {
        let mut req = BTreeMap::new();
        if let Some(t) = &r.time {
            // As OPA-Envoy writes a Timestamp: the message's fields, zero ones left out.
            let mut time = BTreeMap::new();
            if t.seconds != 0 {
                put(&mut time, "seconds", Value::from(t.seconds));
            }
            if t.nanos != 0 {
                put(&mut time, "nanos", Value::from(i64::from(t.nanos)));
            }
            put(&mut req, "time", Value::from(time));
        }
        if let Some(h) = &r.http {
            put(&mut req, "http", http_request(h, headers));
        }
        put(&mut m, "request", Value::from(req));
    }
    put_map(&mut m, "contextExtensions", &a.context_extensions);
    if let Some(md) = &a.metadata_context {
        put(&mut m, "metadataContext", metadata(md));
    }
    if let Some(md) = &a.route_metadata_context {
        put(&mut m, "routeMetadataContext", metadata(md));
    }
    if let Some(tls) = &a.tls_session {
        let mut t = BTreeMap::new();
        put_str(&mut t, "sni", &tls.sni);
        put(&mut m, "tlsSession", Value::from(t));
    }
    Value::from(m)
}

fn http_request(h: &attribute_context::HttpRequest, headers: &HashMap<String, String>) -> Value {
    let mut m = BTreeMap::new();
    put_str(&mut m, "id", &h.id);
    put_str(&mut m, "method", &h.method);
    if !headers.is_empty() {
        put(
            &mut m,
            "headers",
            Value::from(
                headers
                    .iter()
                    .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                    .collect::<BTreeMap<_, _>>(),
            ),
        );
    }
    put_str(&mut m, "path", &h.path);
    put_str(&mut m, "host", &h.host);
    put_str(&mut m, "scheme", &h.scheme);
    put_str(&mut m, "query", &h.query);
    put_str(&mut m, "fragment", &h.fragment);
    if h.size != 0 {
        // A number, as OPA-Envoy writes it (not protojson's int64 string): `size > 100`
        // compares numbers.
        put(&mut m, "size", Value::from(h.size));
    }
    put_str(&mut m, "protocol", &h.protocol);
    if let Some(map) = &h.header_map {
        // The raw header list as Envoy sent it (`encode_raw_headers`), beside `headers`.
        let mut hm = BTreeMap::new();
        if !map.headers.is_empty() {
            let list = map.headers.iter().map(|hv| {
                let mut e = BTreeMap::new();
                put_str(&mut e, "key", &hv.key);
                put_str(&mut e, "value", &hv.value);
                if !hv.raw_value.is_empty() {
                    use base64::Engine as _;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&hv.raw_value);
                    put(&mut e, "rawValue", Value::from(b64));
                }
                Value::from(e)
            });
            put(&mut hm, "headers", Value::from(list.collect::<Vec<_>>()));
        }
        put(&mut m, "headerMap", Value::from(hm));
    }
    put_str(&mut m, "body", &h.body);
    if !h.raw_body.is_empty() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&h.raw_body);
        put(&mut m, "rawBody", Value::from(b64));
    }
    Value::from(m)
}

fn peer(p: &attribute_context::Peer) -> Value {
    let mut m = BTreeMap::new();
    if let Some(addr) = p.address.as_ref().and_then(|a| a.address.as_ref()) {
        let inner = match addr {
            core::address::Address::SocketAddress(s) => {
                let mut sa = BTreeMap::new();
                if s.protocol != 0 {
                    // An enum: its number, as OPA-Envoy writes it (UDP is 1).
                    put(&mut sa, "protocol", Value::from(i64::from(s.protocol)));
                }
                put_str(&mut sa, "address", &s.address);
                put_str(&mut sa, "resolverName", &s.resolver_name);
                if s.ipv4_compat {
                    put(&mut sa, "ipv4Compat", Value::from(true));
                }
                put_str(
                    &mut sa,
                    "networkNamespaceFilepath",
                    &s.network_namespace_filepath,
                );
                match &s.port_specifier {
                    Some(core::socket_address::PortSpecifier::PortValue(port)) => {
                        put(&mut sa, "portValue", Value::from(u64::from(*port)));
                    }
                    Some(core::socket_address::PortSpecifier::NamedPort(name)) => {
                        put_str(&mut sa, "namedPort", name);
                    }
                    None => {}
                }
                ("socketAddress", Value::from(sa))
            }
            core::address::Address::Pipe(pipe) => {
                let mut pm = BTreeMap::new();
                put_str(&mut pm, "path", &pipe.path);
                if pipe.mode != 0 {
                    put(&mut pm, "mode", Value::from(u64::from(pipe.mode)));
                }
                ("pipe", Value::from(pm))
            }
            core::address::Address::EnvoyInternalAddress(internal) => {
                use core::envoy_internal_address::AddressNameSpecifier;
                let mut im = BTreeMap::new();
                if let Some(AddressNameSpecifier::ServerListenerName(name)) =
                    &internal.address_name_specifier
                {
                    put_str(&mut im, "serverListenerName", name);
                }
                put_str(&mut im, "endpointId", &internal.endpoint_id);
                ("envoyInternalAddress", Value::from(im))
            }
        };
        put(&mut m, "address", object([inner]));
    }
    put_str(&mut m, "service", &p.service);
    put_map(&mut m, "labels", &p.labels);
    put_str(&mut m, "principal", &p.principal);
    put_str(&mut m, "certificate", &p.certificate);
    Value::from(m)
}

fn metadata(md: &core::Metadata) -> Value {
    let mut m = BTreeMap::new();
    if !md.filter_metadata.is_empty() {
        put(
            &mut m,
            "filterMetadata",
            Value::from(
                md.filter_metadata
                    .iter()
                    .map(|(k, s)| (Value::from(k.as_str()), proto_struct(s)))
                    .collect::<BTreeMap<_, _>>(),
            ),
        );
    }
    if !md.typed_filter_metadata.is_empty() {
        // `Any` as OPA-Envoy writes it: the message's fields, the value in base64.
        use base64::Engine as _;
        let any = |a: &pbuf::Any| {
            let mut am = BTreeMap::new();
            put_str(&mut am, "typeUrl", &a.type_url);
            if !a.value.is_empty() {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&a.value);
                put(&mut am, "value", Value::from(b64));
            }
            Value::from(am)
        };
        put(
            &mut m,
            "typedFilterMetadata",
            Value::from(
                md.typed_filter_metadata
                    .iter()
                    .map(|(k, a)| (Value::from(k.as_str()), any(a)))
                    .collect::<BTreeMap<_, _>>(),
            ),
        );
    }
    Value::from(m)
}

fn proto_struct(s: &pbuf::Struct) -> Value {
    Value::from(
        s.fields
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), proto_value(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn proto_value(v: &pbuf::Value) -> Value {
    use pbuf::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Value::from(*n),
        Some(Kind::StringValue(s)) => Value::from(s.as_str()),
        Some(Kind::BoolValue(b)) => Value::from(*b),
        Some(Kind::StructValue(s)) => proto_struct(s),
        Some(Kind::ListValue(l)) => {
            Value::from(l.values.iter().map(proto_value).collect::<Vec<_>>())
        }
    }
}

/// RFC 3339 in UTC for seconds and nanoseconds since the Unix epoch.
pub fn rfc3339_utc(seconds: i64, nanos: i32) -> String {
    let t = pbuf::Timestamp { seconds, nanos };
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let nanos = t.nanos.clamp(0, 999_999_999);
    if nanos == 0 {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        let frac = format!("{nanos:09}");
        let frac = frac.trim_end_matches('0');
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac}Z")
    }
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// === small builders for regorus values ===

fn put(m: &mut BTreeMap<Value, Value>, k: &str, v: Value) {
    m.insert(Value::from(k), v);
}

fn put_str(m: &mut BTreeMap<Value, Value>, k: &str, v: &str) {
    if !v.is_empty() {
        put(m, k, Value::from(v));
    }
}

fn put_map(m: &mut BTreeMap<Value, Value>, k: &str, v: &HashMap<String, String>) {
    if !v.is_empty() {
        put(
            m,
            k,
            Value::from(
                v.iter()
                    .map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str())))
                    .collect::<BTreeMap<_, _>>(),
            ),
        );
    }
}

fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::from(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn strings(list: &[String]) -> Value {
    Value::from(
        list.iter()
            .map(|s| Value::from(s.as_str()))
            .collect::<Vec<_>>(),
    )
}

fn opt_str(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

pub mod grpc;
mod multipart;
#[cfg(test)]
mod tests;

/// The bytes a decision key holds for `paths` of a whole document, as `feed_key` writes
/// them from a request (for tests of the read analysis against the key).
#[cfg(test)]
pub(crate) fn document_key(doc: &Value, paths: &[Vec<Segment>]) -> Vec<u8> {
    let mut out = Vec::new();
    for path in paths {
        out.extend_from_slice(format!("{path:?}=").as_bytes());
        write_value(lookup(doc, path), &mut out).expect("a document's values can be written");
    }
    out
}
