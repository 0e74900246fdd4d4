//! Configuration: one YAML file (or the embedded defaults), overridden by `ONBEHALF_*`
//! environment variables, then validated as a whole. Every key is documented in
//! `docs/configuration.md`; unknown keys are errors.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The configuration used when `serve` or `check` runs without `--config`: the quickstart,
/// with policies from `./policies` and the demo issuer's keys from a local JWKS file.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../deploy/demo/onbehalf.yaml");

/// Prefix of environment variables that override configuration keys. Nested keys are joined
/// with a double underscore: `ONBEHALF_SERVER__GRPC_ADDR=127.0.0.1:9292`. Every key lives in a
/// section, so a variable without `__` (e.g. `ONBEHALF_CHECK_TOKEN`) is not configuration.
pub const ENV_PREFIX: &str = "ONBEHALF_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{origin}: invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub policy: PolicyConfig,
    pub authn: AuthnConfig,
    pub headers: HeaderNames,
    pub cache: CacheConfig,
    pub mint: MintConfig,
    pub exchange: ExchangeConfig,
    pub log: LogConfig,
    pub decision_logs: DecisionLogConfig,
    pub telemetry: TelemetryConfig,
}

/// OpenTelemetry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub traces: TracesConfig,
}

/// Traces exported over OTLP. Off unless an endpoint is set, here or in the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's base URL (`http://otel-collector:4317` for gRPC; HTTP exports to
    /// `<endpoint>/v1/traces`). Wins over the `OTEL_EXPORTER_OTLP_*ENDPOINT` variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`; unset: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, then `grpc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<OtlpProtocol>,
    pub sampler: SamplerConfig,
    /// Where a Check's parent span is read from: W3C `traceparent`/`tracestate` and/or B3.
    pub propagators: Vec<Propagator>,
    /// Longest one export may take.
    pub timeout: Interval,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Parent-based: a Check whose parent span was sampled is traced, one whose parent was not
/// is not; a Check without a parent starts a trace with probability `ratio`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    pub ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagator {
    /// W3C Trace Context: `traceparent` and `tracestate`.
    Tracecontext,
    /// Zipkin's B3: the single `b3` header or `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    B3,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            endpoint: None,
            protocol: None,
            sampler: SamplerConfig::default(),
            propagators: vec![Propagator::Tracecontext],
            timeout: Interval(Duration::from_secs(10)),
        }
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { ratio: 0.01 }
    }
}

/// Decision logs in OPA's shape, written off the request path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// One JSON line per decision on stdout.
    pub console: bool,
    /// One JSON line per decision appended to this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// OPA's decision-log upload: batches POSTed as gzip-compressed JSON arrays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Bearer token sent with uploads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    /// Entries waiting to be written at most; past it new entries are dropped and counted.
    pub buffer: usize,
    /// Entries per write or upload at most.
    pub max_batch: usize,
    /// Timeout of one upload.
    pub timeout: Interval,
    /// JSON pointers removed from every entry, besides the defaults (the token headers).
    pub mask: Vec<String>,
}

impl DecisionLogConfig {
    /// Whether any sink is configured.
    pub fn enabled(&self) -> bool {
        self.console || self.file.is_some() || self.url.is_some()
    }
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            console: false,
            file: None,
            url: None,
            bearer_token: None,
            buffer: 1_000,
            max_batch: 500,
            timeout: Interval(Duration::from_secs(5)),
            mask: Vec::new(),
        }
    }
}

/// Just-in-time upstream tokens: on allow, the upstream gets a short-lived token onbehalf
/// signs from the policy's `grant`, instead of the delegation token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MintConfig {
    pub enabled: bool,
    /// `iss` of minted tokens; required when enabled.
    pub issuer: String,
    /// `aud` when the grant names none (a string or a list).
    #[serde(skip_serializing_if = "Vec::is_empty", with = "one_or_many")]
    pub audience: Vec<String>,
    /// Lifetime when the grant names none.
    pub ttl: Interval,
    /// Longest lifetime of any minted token, whatever the grant says.
    pub max_ttl: Interval,
    /// Upstream request header that carries the token: `authorization` carries
    /// `Bearer <jwt>`, any other name the bare token. Default `authorization`, or `txn-token`
    /// for the Transaction Token format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// An allow whose result has no `grant`.
    pub without_grant: WithoutGrant,
    /// PKCS#8 PEM private key, watched for rotation; an ephemeral key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `kid` of the key; default its RFC 7638 thumbprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub algorithm: String,
    pub format: MintFormat,
    /// Reuse a minted JWT for the same token, policy generation and grant while at least
    /// half of its lifetime remains.
    pub reuse: bool,
    /// Most minted tokens kept for reuse.
    pub reuse_max_entries: u64,
}

/// The RFC 8693 token-exchange service: delegation tokens issued on policy's terms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeConfig {
    pub enabled: bool,
    /// `iss` of issued tokens and the base of the discovery documents; required when enabled.
    pub issuer: String,
    /// Its own HTTP listener; the admin listener serves the endpoints when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// PKCS#8 PEM private key, watched for rotation; an ephemeral key when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    pub algorithm: String,
    /// The rule (or package) whose object decides an exchange.
    pub policy_query: String,
    /// Refuse a subject token that carries no `may_act`.
    pub require_may_act: bool,
    /// Longest lifetime of an issued token.
    pub max_ttl: Interval,
    /// Largest request body read.
    pub max_request_bytes: usize,
    pub rate_limit: RateLimitConfig,
}

/// A token bucket per actor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Exchanges per second an actor may sustain; 0 turns the limit off.
    pub per_second: f64,
    /// Exchanges an actor may make at once after a quiet spell.
    pub burst: u32,
}

/// What an allow without a `grant` does when minting is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WithoutGrant {
    /// 403: a token is minted only for what the policy granted, never silently broad.
    Deny,
    /// Forward the request unchanged, with no minted token.
    Pass,
}

/// The shape of minted tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MintFormat {
    /// An access token (`typ: JWT`).
    Jwt,
    /// An OAuth Transaction Token (`typ: txntoken+jwt`, `tctx`, `rctx`), one per request.
    TxnToken,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "PartialCacheConfig")]
pub struct CacheConfig {
    /// Verified tokens: a token is verified once, then served from here until its `exp`.
    pub tokens: CacheSettings,
    /// Decisions, keyed on everything the policy reads.
    pub decisions: CacheSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheSettings {
    pub enabled: bool,
    /// Most entries kept; the least useful are evicted first.
    pub max_entries: u64,
    /// Longest an entry lives (never past the token's `exp`).
    pub ttl: Interval,
}

/// `cache` as written: each cache's defaults differ, so every key is optional here and
/// filled from that cache's own defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialCacheConfig {
    #[serde(default)]
    tokens: PartialCacheSettings,
    #[serde(default)]
    decisions: PartialCacheSettings,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialCacheSettings {
    enabled: Option<bool>,
    max_entries: Option<u64>,
    ttl: Option<Interval>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `host:port`, or `unix:/path/to.sock` for a Unix domain socket.
    pub grpc_addr: ListenAddr,
    /// `host:port` of the admin HTTP server (`/healthz`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// After SIGTERM/SIGINT: how long checks are still answered, not ready, before the
    /// listeners close.
    pub shutdown_delay: Interval,
    /// How long in-flight requests may take to finish once the listeners close.
    pub shutdown_grace: Interval,
    /// Threads answering checks, each serving whole connections; 0 means one per CPU core.
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The rule whose value is the decision.
    pub query: String,
    /// A directory holding `*.rego` and `data.json` files, watched for changes.
    /// The default source when no other is set: `policies`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A local OPA bundle (`.tar.gz`), watched for changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_file: Option<PathBuf>,
    /// An OPA bundle served over HTTP(S), polled with ETags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_url: Option<String>,
    /// Time between two polls of `bundle_url`, with ±20% jitter.
    pub poll_interval: Interval,
    /// Longest wait between retries after failed polls (backoff doubles from 1s).
    pub max_backoff: Interval,
    /// Connect + response timeout of one bundle download.
    pub fetch_timeout: Interval,
    /// Bearer token sent with bundle downloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    /// File holding the bearer token (read at each download, so it may rotate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// Largest bundle archive accepted, in bytes.
    pub max_bundle_bytes: u64,
    /// Largest total size of a bundle's files once decompressed, in bytes.
    pub max_content_bytes: u64,
    /// Longest a single evaluation may run; past it the request is denied.
    pub eval_timeout: Interval,
    /// Longest an evaluation runs on a serving thread before it moves to the evaluation
    /// threads, so that one slow evaluation never stalls the requests sharing its thread.
    pub inline_budget: Interval,
    /// Evaluations running off the serving threads at once; 0 means one per CPU core.
    pub eval_threads: usize,
    /// Protobuf descriptors to decode gRPC request bodies with (directories of `.proto`
    /// files, `.proto` files, or binary `FileDescriptorSet`s), as OPA-Envoy's
    /// `proto-descriptor`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proto_descriptors: Vec<PathBuf>,
    /// Decide, log and count as usual, then allow: for rolling a new policy out. A token
    /// that does not verify is still refused unless `authn.dry_run` too.
    pub dry_run: bool,
    /// Other rules a route may select by name (`onbehalf.policy` in Envoy's
    /// `context_extensions`), each compiled from the same bundle.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub queries: BTreeMap<String, String>,
    pub signing: SigningConfig,
}

/// Bundle signature verification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Refuse bundles without `.signatures.json`.
    pub required: bool,
    pub keys: Vec<SigningKeyConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// The key id a signature names (its `keyid` or `kid`).
    pub id: String,
    #[serde(default = "default_signing_algorithm")]
    pub algorithm: String,
    /// PEM public key.
    pub public_key_file: PathBuf,
}

/// Where the policy comes from, resolved from `PolicyConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySourceConfig {
    Dir(PathBuf),
    BundleFile(PathBuf),
    BundleUrl(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthnConfig {
    /// Whether every request needs a bearer token. When false, a request without one (no
    /// header, or another scheme such as `Basic`) reaches the policy anonymous: `subject`,
    /// `actor`, `delegation` and `token` null, no identity headers, nothing minted. A bearer
    /// token that does not verify is refused either way.
    pub required: bool,
    /// With `policy.dry_run`: allow requests whose token is missing or does not verify too.
    pub dry_run: bool,
    /// Request header that carries the bearer token.
    pub header: String,
    /// Tokens longer than this are rejected before any parsing.
    pub max_token_bytes: usize,
    /// Nesting limit of the `act` claim; deeper tokens are rejected as invalid.
    pub max_delegation_depth: usize,
    /// Longest a request waits for the key fetch its unknown `kid` started.
    pub unknown_kid_wait: Interval,
    pub issuers: Vec<IssuerConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact value of the `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "default_leeway")]
    pub leeway: Interval,
    /// Refuse tokens whose `exp` is further than this from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_lifetime: Option<Interval>,
    /// Keys from a local JWKS file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Keys from a remote JWKS document.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Keys from the `jwks_uri` named by `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// How long fetched keys are used before they are fetched again.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl: Interval,
    /// Least time between two fetches triggered by an unknown `kid`.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_interval: Interval,
    /// Connect + response timeout of one fetch.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Interval,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderNames {
    pub subject: String,
    pub actor: String,
    pub chain: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `onbehalf=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log pipelines).
    Json,
    /// Human-readable lines.
    Text,
}

/// Where the gRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A secret from the configuration (a token, a password): `Debug` and `Display` never show
/// it, so it cannot reach a log line by accident. `expose` is the one way to read it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// A duration written as `250ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

/// Where configuration text came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    Embedded,
    File(PathBuf),
}

// === impl Config ===

impl Config {
    /// Load from a file (or the embedded defaults), apply `ONBEHALF_*` overrides from `env`,
    /// and validate. `env` is injectable so tests never touch the process environment.
    pub fn load<I, K, V>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let (source, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                (Source::File(p.to_path_buf()), text)
            }
            None => (Source::Embedded, EMBEDDED_DEFAULTS.to_string()),
        };
        Self::from_yaml(&source, &text, env)
    }

    pub fn from_yaml<I, K, V>(source: &Source, text: &str, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let origin = source.to_string();
        // Deserialize the text directly first: errors then carry line and column.
        let mut config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_path_to_error::deserialize(yaml_serde::Deserializer::from_str(text)).map_err(
                |e| ConfigError::Parse {
                    origin: origin.clone(),
                    message: with_path(e.path(), e.inner()),
                },
            )?
        };
        let overrides: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.as_ref().starts_with(ENV_PREFIX) && k.as_ref().contains("__"))
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        if !overrides.is_empty() {
            config = apply_env(config, &overrides)?;
        }
        config.resolve_paths(source);
        config.validate().map_err(|problems| ConfigError::Invalid {
            origin: match overrides.is_empty() {
                true => origin,
                false => format!("{origin} with ONBEHALF_* overrides"),
            },
            problems,
        })?;
        Ok(config)
    }

    /// Relative paths in a config file are relative to that file; the embedded defaults are
    /// relative to the working directory.
    fn resolve_paths(&mut self, source: &Source) {
        let Source::File(file) = source else { return };
        let Some(base) = file.parent() else { return };
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in [
            self.policy.dir.as_mut(),
            self.policy.bundle_file.as_mut(),
            self.policy.bearer_token_file.as_mut(),
            self.mint.key_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            rebase(p);
        }
        for key in &mut self.policy.signing.keys {
            rebase(&mut key.public_key_file);
        }
        for issuer in &mut self.authn.issuers {
            if let Some(p) = issuer.jwks_file.as_mut() {
                rebase(p);
            }
        }
        if let ListenAddr::Unix(p) = &mut self.server.grpc_addr {
            rebase(p);
        }
    }

    /// Checks every value and returns every problem, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let mut bad = |key: String, why: &str| problems.push(format!("{key}: {why}"));

        let traces = &self.telemetry.traces;
        if let Some(endpoint) = &traces.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            bad(
                "telemetry.traces.endpoint".into(),
                "must be an http:// or https:// URL",
            );
        }
        if !(0.0..=1.0).contains(&traces.sampler.ratio) {
            bad(
                "telemetry.traces.sampler.ratio".into(),
                "must be between 0 and 1",
            );
        }
        if traces.propagators.is_empty() {
            bad(
                "telemetry.traces.propagators".into(),
                "list tracecontext, b3 or both",
            );
        }

        let logs = &self.decision_logs;
        if let Some(url) = &logs.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bad(
                "decision_logs.url".into(),
                "must be an http:// or https:// URL",
            );
        }
        if logs.buffer == 0 || logs.max_batch == 0 {
            bad(
                "decision_logs.buffer".into(),
                "buffer and max_batch must be at least 1",
            );
        }
        for mask in &logs.mask {
            if !mask.starts_with("/input") && !mask.starts_with("/result") {
                bad(
                    "decision_logs.mask".into(),
                    "each is a JSON pointer into /input or /result, e.g. /input/parsed_body/password",
                );
            }
        }
        if !is_rule_path(&self.policy.query) {
            bad(
                "policy.query".into(),
                "must be a rule path starting with `data.`, e.g. data.envoy.authz.allow",
            );
        }
        for (name, query) in &self.policy.queries {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bad(
                    format!("policy.queries.{name}"),
                    "names are letters, digits, `_` and `-`",
                );
            }
            if !is_rule_path(query) {
                bad(
                    format!("policy.queries.{name}"),
                    "must be a rule path starting with `data.`, e.g. data.mcp.authz.allow",
                );
            }
        }
        let p = &self.policy;
        let sources = usize::from(p.dir.is_some())
            + usize::from(p.bundle_file.is_some())
            + usize::from(p.bundle_url.is_some());
        if sources > 1 {
            bad(
                "policy".into(),
                "set at most one of dir, bundle_file or bundle_url",
            );
        }
        if let Some(url) = &p.bundle_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            bad(
                "policy.bundle_url".into(),
                "must be an http:// or https:// URL",
            );
        }
        if p.bearer_token.is_some() && p.bearer_token_file.is_some() {
            bad(
                "policy.bearer_token".into(),
                "set bearer_token or bearer_token_file, not both",
            );
        }
        if p.poll_interval.0 < Duration::from_millis(100) {
            bad("policy.poll_interval".into(), "must be at least 100ms");
        }
        if p.max_backoff.0 < Duration::from_millis(100) {
            bad("policy.max_backoff".into(), "must be at least 100ms");
        }
        if p.fetch_timeout.0.is_zero() {
            bad("policy.fetch_timeout".into(), "must be more than 0");
        }
        if p.eval_timeout.0 < Duration::from_millis(1) {
            bad("policy.eval_timeout".into(), "must be at least 1ms");
        }
        if p.inline_budget.0.is_zero() || p.inline_budget.0 > p.eval_timeout.0 {
            bad(
                "policy.inline_budget".into(),
                "must be more than 0 and at most policy.eval_timeout",
            );
        }
        if p.max_bundle_bytes == 0 || p.max_content_bytes == 0 {
            bad(
                "policy.max_bundle_bytes".into(),
                "limits must be more than 0",
            );
        }
        if p.signing.required && p.signing.keys.is_empty() {
            bad(
                "policy.signing.keys".into(),
                "signing.required needs at least one key",
            );
        }
        for (i, key) in p.signing.keys.iter().enumerate() {
            if crate::jose::parse_algorithm(&key.algorithm).is_none() {
                bad(
                    format!("policy.signing.keys[{i}].algorithm"),
                    &format!(
                        "`{}` is not a supported public-key algorithm",
                        key.algorithm
                    ),
                );
            }
        }
        for (key, c) in [
            ("cache.tokens", &self.cache.tokens),
            ("cache.decisions", &self.cache.decisions),
        ] {
            if c.enabled && (c.max_entries == 0 || c.ttl.0.is_zero()) {
                bad(
                    key.into(),
                    "max_entries and ttl must be more than 0 (or set enabled: false)",
                );
            }
        }
        if !is_header_name(&self.authn.header) {
            bad(
                "authn.header".into(),
                "must be a lower-case HTTP header name",
            );
        }
        if self.authn.max_token_bytes < 64 {
            bad("authn.max_token_bytes".into(), "must be at least 64");
        }
        if self.authn.max_delegation_depth == 0 || self.authn.max_delegation_depth > 64 {
            bad(
                "authn.max_delegation_depth".into(),
                "must be between 1 and 64",
            );
        }
        if self.authn.issuers.is_empty() && self.authn.required {
            bad(
                "authn.issuers".into(),
                "at least one trusted issuer is required (or authn.required: false, to judge \
                 every request anonymous)",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, iss) in self.authn.issuers.iter().enumerate() {
            let key = |k: &str| format!("authn.issuers[{i}].{k}");
            if iss.issuer.is_empty() {
                bad(key("issuer"), "must not be empty");
            } else if !seen.insert(iss.issuer.as_str()) {
                bad(key("issuer"), "is listed twice");
            }
            if iss.audiences.is_empty() || iss.audiences.iter().any(|a| a.is_empty()) {
                bad(key("audiences"), "list at least one non-empty audience");
            }
            if iss.algorithms.is_empty() {
                bad(key("algorithms"), "list at least one algorithm");
            }
            for alg in &iss.algorithms {
                if crate::jose::parse_algorithm(alg).is_none() {
                    bad(
                        key("algorithms"),
                        &format!(
                            "`{alg}` is not allowed; use {}",
                            crate::jose::VERIFY_ALGORITHMS
                        ),
                    );
                }
            }
            let sources = usize::from(iss.jwks_file.is_some())
                + usize::from(iss.jwks_uri.is_some())
                + usize::from(iss.discovery);
            if sources != 1 {
                bad(
                    format!("authn.issuers[{i}]"),
                    "set exactly one of jwks_file, jwks_uri or discovery: true",
                );
            }
            if let Some(uri) = &iss.jwks_uri
                && !(uri.starts_with("https://") || uri.starts_with("http://"))
            {
                bad(key("jwks_uri"), "must be an http:// or https:// URL");
            }
            if iss.discovery
                && !(iss.issuer.starts_with("https://") || iss.issuer.starts_with("http://"))
            {
                bad(
                    key("discovery"),
                    "needs an issuer that is an http:// or https:// URL",
                );
            }
            if iss.jwks_ttl.0 < Duration::from_secs(1) {
                bad(key("jwks_ttl"), "must be at least 1s");
            }
            if iss.fetch_timeout.0.is_zero() {
                bad(key("fetch_timeout"), "must be more than 0");
            }
        }
        for (key, name) in [
            ("headers.subject", &self.headers.subject),
            ("headers.actor", &self.headers.actor),
            ("headers.chain", &self.headers.chain),
        ] {
            if !is_header_name(name) {
                bad(key.into(), "must be a lower-case HTTP header name");
            }
        }
        self.validate_mint(&mut bad);
        self.validate_exchange(&mut bad);
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bad(
                "log.level".into(),
                "is not a valid filter (e.g. info, debug, onbehalf=debug)",
            );
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems),
        }
    }
}

impl Config {
    fn validate_exchange(&self, bad: &mut impl FnMut(String, &str)) {
        let x = &self.exchange;
        if !x.enabled {
            return;
        }
        if !(x.issuer.starts_with("https://") || x.issuer.starts_with("http://")) {
            bad(
                "exchange.issuer".into(),
                "is required when exchange.enabled is true: the http:// or https:// URL \
                 sidecars trust (the discovery documents are served below it)",
            );
        }
        if crate::jose::SignAlgorithm::parse(&x.algorithm).is_none() {
            bad(
                "exchange.algorithm".into(),
                &format!(
                    "`{}` cannot sign; use {}",
                    x.algorithm,
                    crate::jose::SIGN_ALGORITHMS
                ),
            );
        }
        if !x.policy_query.starts_with("data.") {
            bad(
                "exchange.policy_query".into(),
                "must be a rule or package path starting with `data.`",
            );
        }
        if x.max_ttl.0 < Duration::from_secs(1) {
            bad("exchange.max_ttl".into(), "must be at least 1s");
        }
        if x.key_id.as_deref().is_some_and(str::is_empty) {
            bad("exchange.key_id".into(), "must not be empty");
        }
        if x.max_request_bytes < 1024 {
            bad("exchange.max_request_bytes".into(), "must be at least 1024");
        }
        let r = &x.rate_limit;
        if !r.per_second.is_finite() || r.per_second < 0.0 {
            bad(
                "exchange.rate_limit.per_second".into(),
                "must be 0 (no limit) or more",
            );
        }
        if r.per_second > 0.0 && r.burst == 0 {
            bad(
                "exchange.rate_limit.burst".into(),
                "must be at least 1 while per_second is set",
            );
        }
        if self.mint.enabled && self.mint.issuer == x.issuer {
            bad(
                "exchange.issuer".into(),
                "is also mint.issuer; give each its own (a verifier picks keys by `iss`)",
            );
        }
        if x.addr.is_some() && x.addr == Some(self.server.admin_addr) {
            bad(
                "exchange.addr".into(),
                "is server.admin_addr; leave it unset to serve on the admin listener",
            );
        }
    }

    fn validate_mint(&self, bad: &mut impl FnMut(String, &str)) {
        let m = &self.mint;
        if !m.enabled {
            return;
        }
        if m.issuer.trim().is_empty() {
            bad(
                "mint.issuer".into(),
                "is required when mint.enabled is true",
            );
        }
        if m.audience.iter().any(|a| a.is_empty()) {
            bad("mint.audience".into(), "must not hold an empty string");
        }
        if crate::jose::SignAlgorithm::parse(&m.algorithm).is_none() {
            bad(
                "mint.algorithm".into(),
                &format!(
                    "`{}` cannot sign; use {}",
                    m.algorithm,
                    crate::jose::SIGN_ALGORITHMS
                ),
            );
        }
        if m.max_ttl.0 < Duration::from_secs(1) {
            bad("mint.max_ttl".into(), "must be at least 1s");
        }
        if m.ttl.0 < Duration::from_secs(1) || m.ttl.0 > m.max_ttl.0 {
            bad(
                "mint.ttl".into(),
                "must be at least 1s and at most mint.max_ttl",
            );
        }
        if let Some(h) = &m.header
            && !is_header_name(h)
        {
            bad(
                "mint.header".into(),
                "must be a lower-case HTTP header name",
            );
        }
        if m.key_id.as_deref().is_some_and(str::is_empty) {
            bad("mint.key_id".into(), "must not be empty");
        }
        if m.reuse && m.reuse_max_entries == 0 {
            bad(
                "mint.reuse_max_entries".into(),
                "must be more than 0 (or set reuse: false)",
            );
        }
    }
}

/// Sets each `ONBEHALF_A__B=value` override at key path `a.b`, then deserializes again.
/// Values are read as YAML scalars, so `true`, `5` and `30s` mean what they do in the file.
fn apply_env(config: Config, overrides: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let mut tree = yaml_serde::to_value(&config).map_err(|e| ConfigError::Parse {
        origin: "configuration".into(),
        message: e.to_string(),
    })?;
    for (var, raw) in overrides {
        let path: Vec<String> = var
            .strip_prefix(ENV_PREFIX)
            .unwrap_or_default()
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let value: yaml_serde::Value = yaml_serde::from_str(raw).map_err(|e| ConfigError::Env {
            var: var.clone(),
            message: format!("value is not valid YAML: {e}"),
        })?;
        set_path(&mut tree, &path, value).map_err(|message| ConfigError::Env {
            var: var.clone(),
            message,
        })?;
        // Deserialize after each override so an error names the variable that caused it.
        serde_path_to_error::deserialize::<_, Config>(tree.clone()).map_err(|e| {
            ConfigError::Env {
                var: var.clone(),
                message: with_path(e.path(), e.inner()),
            }
        })?;
    }
    yaml_serde::from_value(tree).map_err(|e| ConfigError::Parse {
        origin: "environment overrides".into(),
        message: e.to_string(),
    })
}

/// `key.path: message`, unless the message already starts with the path.
fn with_path(path: &serde_path_to_error::Path, inner: &yaml_serde::Error) -> String {
    let path = path.to_string();
    let message = inner.to_string();
    match path.as_str() {
        "." | "" => message,
        _ => {
            // yaml_serde prefixes the enclosing section itself; keep only the full path.
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => rest,
                _ => message.as_str(),
            };
            format!("{path}: {message}")
        }
    }
}

fn set_path(
    tree: &mut yaml_serde::Value,
    path: &[String],
    value: yaml_serde::Value,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("names no configuration key".into());
    };
    let mut node = tree;
    let prefix = |depth: usize| {
        parents
            .iter()
            .take(depth)
            .cloned()
            .collect::<Vec<_>>()
            .join(".")
    };
    for (depth, part) in parents.iter().enumerate() {
        node = match node {
            yaml_serde::Value::Mapping(map) => map
                .entry(yaml_serde::Value::String(part.clone()))
                .or_insert_with(|| yaml_serde::Value::Mapping(Default::default())),
            yaml_serde::Value::Sequence(seq) => {
                let index: usize = part
                    .parse()
                    .map_err(|_| format!("`{part}` is not a list index"))?;
                seq.get_mut(index).ok_or_else(|| {
                    format!("index {index} is past the end of `{}`", prefix(depth))
                })?
            }
            _ => return Err(format!("`{}` is not a section", prefix(depth))),
        };
    }
    match node {
        yaml_serde::Value::Mapping(map) => {
            map.insert(yaml_serde::Value::String(last.clone()), value);
            Ok(())
        }
        yaml_serde::Value::Sequence(seq) => {
            let index: usize = last
                .parse()
                .map_err(|_| format!("`{last}` is not a list index"))?;
            let slot = seq
                .get_mut(index)
                .ok_or_else(|| format!("index {index} is past the end of the list"))?;
            *slot = value;
            Ok(())
        }
        _ => Err(format!("`{}` is not a section", parents.join("."))),
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

// === defaults ===

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway() -> Interval {
    Interval(Duration::from_secs(30))
}
fn default_jwks_ttl() -> Interval {
    Interval(Duration::from_secs(300))
}
fn default_min_refresh() -> Interval {
    Interval(Duration::from_secs(10))
}
fn default_fetch_timeout() -> Interval {
    Interval(Duration::from_secs(5))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_addr: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9191))),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8181)),
            shutdown_delay: Interval(Duration::from_secs(2)),
            shutdown_grace: Interval(Duration::from_secs(5)),
            worker_threads: 0,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            tokens: CacheSettings {
                enabled: true,
                // About 0.9 KiB a token: 10,000 tokens stay under 10 MiB.
                max_entries: 10_000,
                ttl: Interval(Duration::from_secs(300)),
            },
            decisions: CacheSettings {
                enabled: true,
                max_entries: 100_000,
                ttl: Interval(Duration::from_secs(60)),
            },
        }
    }
}

impl From<PartialCacheConfig> for CacheConfig {
    fn from(p: PartialCacheConfig) -> Self {
        let defaults = CacheConfig::default();
        let merge = |p: PartialCacheSettings, d: CacheSettings| CacheSettings {
            enabled: p.enabled.unwrap_or(d.enabled),
            max_entries: p.max_entries.unwrap_or(d.max_entries),
            ttl: p.ttl.unwrap_or(d.ttl),
        };
        CacheConfig {
            tokens: merge(p.tokens, defaults.tokens),
            decisions: merge(p.decisions, defaults.decisions),
        }
    }
}

fn default_signing_algorithm() -> String {
    "RS256".into()
}

/// `data.` and dot-separated names of letters, digits and `_`.
fn is_rule_path(query: &str) -> bool {
    query.strip_prefix("data.").is_some_and(|rest| {
        rest.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            query: "data.envoy.authz.allow".into(),
            dir: None,
            bundle_file: None,
            bundle_url: None,
            poll_interval: Interval(Duration::from_secs(30)),
            max_backoff: Interval(Duration::from_secs(120)),
            fetch_timeout: Interval(Duration::from_secs(10)),
            bearer_token: None,
            bearer_token_file: None,
            max_bundle_bytes: 16 * 1024 * 1024,
            max_content_bytes: 64 * 1024 * 1024,
            eval_timeout: Interval(Duration::from_millis(100)),
            inline_budget: Interval(Duration::from_millis(1)),
            eval_threads: 0,
            proto_descriptors: Vec::new(),
            dry_run: false,
            queries: BTreeMap::new(),
            signing: SigningConfig::default(),
        }
    }
}

impl PolicyConfig {
    /// The one configured source; a directory `policies` when none is set.
    pub fn source(&self) -> PolicySourceConfig {
        match (&self.dir, &self.bundle_file, &self.bundle_url) {
            (Some(dir), _, _) => PolicySourceConfig::Dir(dir.clone()),
            (None, Some(file), _) => PolicySourceConfig::BundleFile(file.clone()),
            (None, None, Some(url)) => PolicySourceConfig::BundleUrl(url.clone()),
            (None, None, None) => PolicySourceConfig::Dir(PathBuf::from("policies")),
        }
    }
}

impl Default for MintConfig {
    fn default() -> Self {
        MintConfig {
            enabled: false,
            issuer: String::new(),
            audience: Vec::new(),
            ttl: Interval(Duration::from_secs(60)),
            max_ttl: Interval(Duration::from_secs(300)),
            header: None,
            without_grant: WithoutGrant::Deny,
            key_file: None,
            key_id: None,
            algorithm: "ES256".into(),
            format: MintFormat::Jwt,
            reuse: true,
            reuse_max_entries: 10_000,
        }
    }
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            enabled: false,
            issuer: String::new(),
            addr: None,
            key_file: None,
            key_id: None,
            algorithm: "ES256".into(),
            policy_query: "data.onbehalf.exchange".into(),
            require_may_act: false,
            max_ttl: Interval(Duration::from_secs(3600)),
            max_request_bytes: 64 * 1024,
            rate_limit: RateLimitConfig::default(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 5.0,
            burst: 20,
        }
    }
}

impl MintConfig {
    /// The upstream header for minted tokens.
    pub fn header(&self) -> &str {
        match (&self.header, self.format) {
            (Some(h), _) => h,
            (None, MintFormat::Jwt) => "authorization",
            (None, MintFormat::TxnToken) => "txn-token",
        }
    }
}

/// A string or a list of strings, read as a list.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        })
    }

    pub fn serialize<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v)
    }
}

impl Default for AuthnConfig {
    fn default() -> Self {
        AuthnConfig {
            required: true,
            dry_run: false,
            header: "authorization".into(),
            max_token_bytes: 8192,
            max_delegation_depth: 8,
            unknown_kid_wait: Interval(Duration::from_millis(100)),
            issuers: Vec::new(),
        }
    }
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            subject: "x-onbehalf-subject".into(),
            actor: "x-onbehalf-actor".into(),
            chain: "x-onbehalf-chain".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Json,
        }
    }
}

// === impl Source ===

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Embedded => f.write_str("embedded default config"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

// === impl Secret ===

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

// === impl ListenAddr ===

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/onbehalf.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("`{s}` is not host:port (e.g. 127.0.0.1:9191) or unix:/path/to.sock")
        })
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// === impl Interval ===

impl std::str::FromStr for Interval {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 250ms, 30s, 5m or 1h"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("`{s}` is not a duration like 250ms, 30s, 5m or 1h")),
        };
        Ok(Interval(d))
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
