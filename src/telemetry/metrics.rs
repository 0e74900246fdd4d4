//! The metrics of `/metrics`, encoded by prometheus-client in the OpenMetrics text format.
//!
//! What the request path counts is a prometheus-client handle resolved once, at start (one
//! per label set, in arrays indexed by the enums that name them): counting is one relaxed
//! add. What belongs to other parts — caches, issuers' keys, the policy store, decision logs
//! — is read from them when `/metrics` is scraped (`Scrape`). Label values are bounded:
//! fixed words, configured issuers and the active revision; never a token, path, subject or
//! actor.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::histogram::Latency;
use crate::authn::IssuerCounts;
use crate::cache::CacheCounts;
use crate::decision::{Decision, DenyReason};
use crate::policy::store::PolicyStatus;

/// The content type of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What became of an allow when minting is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintResult {
    /// A new token was signed.
    Signed,
    /// A token minted for the same decision was reused.
    Reused,
    /// The result had no grant.
    NoGrant,
    /// Minting failed (the request was denied).
    Failed,
}

impl MintResult {
    const ALL: [MintResult; 4] = [
        MintResult::Signed,
        MintResult::Reused,
        MintResult::NoGrant,
        MintResult::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MintResult::Signed => "signed",
            MintResult::Reused => "reused",
            MintResult::NoGrant => "no_grant",
            MintResult::Failed => "failed",
        }
    }
}

/// How a token exchange ended: `issued`, or the error code it was answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeResult {
    Issued,
    InvalidRequest,
    InvalidGrant,
    InvalidTarget,
    InvalidScope,
    UnauthorizedClient,
    UnsupportedGrantType,
    /// 429: the actor's rate limit.
    SlowDown,
    /// 503: no policy or keys yet.
    TemporarilyUnavailable,
    /// 500: evaluation or signing failed.
    ServerError,
}

impl ExchangeResult {
    pub const ALL: [ExchangeResult; 10] = [
        ExchangeResult::Issued,
        ExchangeResult::InvalidRequest,
        ExchangeResult::InvalidGrant,
        ExchangeResult::InvalidTarget,
        ExchangeResult::InvalidScope,
        ExchangeResult::UnauthorizedClient,
        ExchangeResult::UnsupportedGrantType,
        ExchangeResult::SlowDown,
        ExchangeResult::TemporarilyUnavailable,
        ExchangeResult::ServerError,
    ];

    /// The metric label, which is also the OAuth `error` code for a refusal.
    pub fn label(self) -> &'static str {
        match self {
            ExchangeResult::Issued => "issued",
            ExchangeResult::InvalidRequest => "invalid_request",
            ExchangeResult::InvalidGrant => "invalid_grant",
            ExchangeResult::InvalidTarget => "invalid_target",
            ExchangeResult::InvalidScope => "invalid_scope",
            ExchangeResult::UnauthorizedClient => "unauthorized_client",
            ExchangeResult::UnsupportedGrantType => "unsupported_grant_type",
            ExchangeResult::SlowDown => "slow_down",
            ExchangeResult::TemporarilyUnavailable => "temporarily_unavailable",
            ExchangeResult::ServerError => "server_error",
        }
    }
}

/// The engine an evaluation ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalEngine {
    /// regorus' register VM.
    Vm,
    /// regorus' interpreter: for policies the VM cannot compile (extensions, `walk`, `with`).
    Interpreter,
}

impl EvalEngine {
    const ALL: [EvalEngine; 2] = [EvalEngine::Vm, EvalEngine::Interpreter];

    pub fn label(self) -> &'static str {
        match self {
            EvalEngine::Vm => "vm",
            EvalEngine::Interpreter => "interpreter",
        }
    }
}

/// The decision-cache lookups a Check can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheLookup {
    Hit,
    Miss,
    /// The policy reads time or randomness: never cached.
    Uncacheable,
}

impl CacheLookup {
    const ALL: [CacheLookup; 3] = [
        CacheLookup::Hit,
        CacheLookup::Miss,
        CacheLookup::Uncacheable,
    ];

    fn label(self) -> &'static str {
        match self {
            CacheLookup::Hit => "hit",
            CacheLookup::Miss => "miss",
            CacheLookup::Uncacheable => "uncacheable",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OneLabel {
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabel {
    engine: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResult {
    issuer: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    revision: String,
    generation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// What the request path counts. Every handle is resolved at start.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    allowed: Counter,
    denied: [Counter; DenyReason::ALL.len()],
    /// Denials answered with an allow by a dry run, by reason.
    dry_run_allowed: [Counter; DenyReason::ALL.len()],
    /// Check latency: allow, deny.
    check_latency: [Latency; 2],
    eval_latency: [Latency; EvalEngine::ALL.len()],
    decision_cache: [Counter; CacheLookup::ALL.len()],
    minted: [Counter; MintResult::ALL.len()],
    exchanges: [Counter; ExchangeResult::ALL.len()],
    evaluated_aside: Counter,
}

/// The decision log's counts, read when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecisionLogCounts {
    pub written: u64,
    pub dropped: u64,
    pub failed: u64,
    pub upload_failures: u64,
}

/// What other parts know, gathered for one scrape.
#[derive(Debug)]
pub struct Scrape<'a> {
    pub ready: bool,
    pub policy: &'a PolicyStatus,
    /// The token cache, when on (its hits and misses are its own).
    pub token_cache: Option<CacheCounts>,
    /// The decision cache's evictions and entries, when on.
    pub decision_cache: Option<CacheCounts>,
    pub issuers: Vec<IssuerCounts>,
    pub decision_log: Option<DecisionLogCounts>,
}

/// Registers a family of counters or histograms and resolves one handle per label set.
fn handles<S, M, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    labels: [S; N],
) -> [M; N]
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone + Default,
    Family<S, M>: prometheus_client::registry::Metric,
{
    let family = Family::<S, M>::default();
    let handles = labels.map(|l| family.get_or_create_owned(&l));
    registry.register(name, help, family);
    handles
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let allowed = decisions.get_or_create_owned(&DecisionLabels {
            decision: "allow",
            reason: "policy",
        });
        let denied = DenyReason::ALL.map(|r| {
            decisions.get_or_create_owned(&DecisionLabels {
                decision: "deny",
                reason: r.label(),
            })
        });
        registry.register(
            "onbehalf_decisions",
            "Check decisions by outcome and reason",
            decisions,
        );
        let dry_run_allowed = handles(
            &mut registry,
            "onbehalf_dry_run_allowed",
            "Denials answered with an allow by a dry run, by the reason of the would-be denial (also counted in onbehalf_decisions_total)",
            DenyReason::ALL.map(|r| ReasonLabel { reason: r.label() }),
        );
        let check_latency = handles(
            &mut registry,
            "onbehalf_check_duration_seconds",
            "Time to decide one Check, from the request read to the answer built, by decision",
            ["allow", "deny"].map(|decision| OneLabel { decision }),
        );
        let eval_latency = handles(
            &mut registry,
            "onbehalf_policy_evaluation_duration_seconds",
            "Policy evaluations (decision-cache misses) and their time, by the engine the policy runs on: vm, or interpreter for policies the register VM cannot compile",
            EvalEngine::ALL.map(|e| EngineLabel { engine: e.label() }),
        );
        let decision_cache = handles(
            &mut registry,
            "onbehalf_decision_cache",
            "Decision cache lookups by result: hit, miss (not cached yet), uncacheable (the policy reads time or randomness)",
            CacheLookup::ALL.map(|l| ResultLabel { result: l.label() }),
        );
        let minted = handles(
            &mut registry,
            "onbehalf_minted_tokens",
            "Allows with minting on, by result: signed (a new upstream token), reused (one minted for the same decision), no_grant (the result had no grant), failed (denied)",
            MintResult::ALL.map(|r| ResultLabel { result: r.label() }),
        );
        let exchanges = handles(
            &mut registry,
            "onbehalf_token_exchanges",
            "Token exchanges (POST /token) by result: issued, or the OAuth error code answered",
            ExchangeResult::ALL.map(|r| ResultLabel { result: r.label() }),
        );
        let evaluated_aside = Counter::default();
        registry.register(
            "onbehalf_policy_evaluations_moved",
            "Evaluations that outgrew policy.inline_budget on a serving thread and ran again off it",
            evaluated_aside.clone(),
        );
        registry.register(
            "onbehalf_build",
            "The running build",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics {
            registry,
            allowed,
            denied,
            dry_run_allowed,
            check_latency,
            eval_latency,
            decision_cache,
            minted,
            exchanges,
            evaluated_aside,
        }
    }

    pub fn record(&self, decision: &Decision) {
        match decision {
            Decision::Allow(_) => {
                self.allowed.inc();
            }
            Decision::Deny(d) => {
                if let Some(c) = self.denied.get(d.reason as usize) {
                    c.inc();
                }
            }
        }
    }

    /// How long one Check took to decide.
    pub fn check_took(&self, decision: &Decision, elapsed: Duration) {
        let [allow, deny] = &self.check_latency;
        match decision.is_allow() {
            true => allow.observe(elapsed),
            false => deny.observe(elapsed),
        }
    }

    /// How long one evaluation took, on `engine`.
    pub fn evaluation_took(&self, engine: EvalEngine, elapsed: Duration) {
        if let Some(h) = self.eval_latency.get(engine as usize) {
            h.observe(elapsed);
        }
    }

    /// Evaluations made on `engine`.
    pub fn evaluations(&self, engine: EvalEngine) -> u64 {
        self.eval_latency
            .get(engine as usize)
            .map_or(0, Latency::count)
    }

    pub fn mint(&self, result: MintResult) {
        if let Some(c) = self.minted.get(result as usize) {
            c.inc();
        }
    }

    pub fn minted(&self, result: MintResult) -> u64 {
        self.minted.get(result as usize).map_or(0, Counter::get)
    }

    pub fn exchange(&self, result: ExchangeResult) {
        if let Some(c) = self.exchanges.get(result as usize) {
            c.inc();
        }
    }

    pub fn exchanges(&self, result: ExchangeResult) -> u64 {
        self.exchanges.get(result as usize).map_or(0, Counter::get)
    }

    /// An evaluation outgrew its slice of a serving thread and moved off it.
    pub fn evaluated_aside(&self) {
        self.evaluated_aside.inc();
    }

    fn lookup(&self, l: CacheLookup) {
        if let Some(c) = self.decision_cache.get(l as usize) {
            c.inc();
        }
    }

    pub fn decision_cache_hit(&self) {
        self.lookup(CacheLookup::Hit);
    }

    pub fn decision_cache_miss(&self) {
        self.lookup(CacheLookup::Miss);
    }

    /// The policy reads time or randomness: its decisions are never cached.
    pub fn decision_cache_uncacheable(&self) {
        self.lookup(CacheLookup::Uncacheable);
    }

    /// (hits, misses, uncacheable) of the decision cache.
    pub fn decision_cache(&self) -> (u64, u64, u64) {
        let [hit, miss, uncacheable] = &self.decision_cache;
        (hit.get(), miss.get(), uncacheable.get())
    }

    pub fn allowed(&self) -> u64 {
        self.allowed.get()
    }

    /// A denial for `reason` answered with an allow (a dry run).
    pub fn dry_run_allowed(&self, reason: DenyReason) {
        if let Some(c) = self.dry_run_allowed.get(reason as usize) {
            c.inc();
        }
    }

    pub fn dry_run_allowed_count(&self, reason: DenyReason) -> u64 {
        self.dry_run_allowed
            .get(reason as usize)
            .map_or(0, Counter::get)
    }

    pub fn denied(&self, reason: DenyReason) -> u64 {
        self.denied.get(reason as usize).map_or(0, Counter::get)
    }

    /// The OpenMetrics text of every metric: the request path's, then what `scrape` read.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let mut out = String::new();
        let mut now = Registry::default();
        register_scrape(&mut now, scrape);
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &now))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

/// Registers what `scrape` read, as families made for this scrape.
fn register_scrape(r: &mut Registry, scrape: &Scrape<'_>) {
    let gauge = |v: i64| {
        let g = Gauge::<i64>::default();
        g.set(v);
        g
    };
    let counter = |v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        c
    };
    r.register(
        "onbehalf_ready",
        "1 once the policy and every issuer's keys have loaded",
        gauge(i64::from(scrape.ready)),
    );
    r.register(
        "onbehalf_policy_interpreter_fallbacks",
        "Evaluations the register VM could not run (for a reason other than a limit), answered by the interpreter",
        counter(crate::policy::interpreter_fallbacks()),
    );

    let caches = [
        ("token", scrape.token_cache),
        ("decision", scrape.decision_cache),
    ];
    if let Some(c) = scrape.token_cache {
        let lookups = Family::<ResultLabel, Counter>::default();
        for (result, n) in [("hit", c.hits), ("miss", c.misses)] {
            lookups.get_or_create(&ResultLabel { result }).inc_by(n);
        }
        r.register(
            "onbehalf_token_cache",
            "Token cache lookups by result (a hit skips signature verification). The decision cache's are onbehalf_decision_cache_total",
            lookups,
        );
    }
    let evictions = Family::<CacheLabel, Counter>::default();
    let entries = Family::<CacheLabel, Gauge>::default();
    for (cache, counts) in caches {
        if let Some(c) = counts {
            evictions
                .get_or_create(&CacheLabel { cache })
                .inc_by(c.evictions);
            entries
                .get_or_create(&CacheLabel { cache })
                .set(i64::try_from(c.entries).unwrap_or(i64::MAX));
        }
    }
    r.register(
        "onbehalf_cache_evictions",
        "Entries removed from a cache to keep it within its max_entries, by cache (token, decision)",
        evictions,
    );
    r.register(
        "onbehalf_cache_entries",
        "Entries in a cache, by cache (approximate: moka counts lazily)",
        entries,
    );

    let fetches = Family::<IssuerResult, Counter>::default();
    let ages = Family::<IssuerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for i in &scrape.issuers {
        for (result, n) in [("ok", i.fetched), ("error", i.failed)] {
            fetches
                .get_or_create(&IssuerResult {
                    issuer: i.issuer.clone(),
                    result,
                })
                .inc_by(n);
        }
        if let Some(age) = i.age {
            ages.get_or_create(&IssuerLabel {
                issuer: i.issuer.clone(),
            })
            .set(age.as_secs_f64());
        }
    }
    r.register(
        "onbehalf_jwks_fetches",
        "Fetches of an issuer's keys (JWKS, discovery, or key file) by issuer and result: ok, error (the keys already known stay)",
        fetches,
    );
    r.register(
        "onbehalf_jwks_keys_age_seconds",
        "Seconds since the issuer's keys in use were fetched",
        ages,
    );

    let policy = scrape.policy;
    let activations = Family::<ResultLabel, Counter>::default();
    for (result, n) in [
        ("activated", policy.activations),
        ("failed", policy.failures),
    ] {
        activations.get_or_create(&ResultLabel { result }).inc_by(n);
    }
    r.register(
        "onbehalf_policy_activations",
        "Policy bundle loads by result: activated, or failed (rejected or not fetched; the last good policy kept serving)",
        activations,
    );
    let ok = policy.last_error.is_none() && policy.revision.is_some();
    r.register(
        "onbehalf_policy_last_load_ok",
        "1 when the last policy load succeeded, 0 when it failed",
        gauge(i64::from(ok)),
    );
    if let Some(revision) = &policy.revision {
        r.register(
            "onbehalf_policy_revision",
            "The active policy revision and generation",
            Info::new(RevisionLabels {
                revision: revision.clone(),
                generation: policy.generation.to_string(),
            }),
        );
    }

    if let Some(log) = scrape.decision_log {
        let results = Family::<ResultLabel, Counter>::default();
        for (result, n) in [
            ("written", log.written),
            ("dropped", log.dropped),
            ("failed", log.failed),
        ] {
            results.get_or_create(&ResultLabel { result }).inc_by(n);
        }
        r.register(
            "onbehalf_decision_logs",
            "Decision-log entries by outcome: written (by every sink), dropped (the queue was full), failed (a sink could not take them)",
            results,
        );
        r.register(
            "onbehalf_decision_log_upload_failures",
            "Failed uploads to decision_logs.url (each retried)",
            counter(log.upload_failures),
        );
    }
}
