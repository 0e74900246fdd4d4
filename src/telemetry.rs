//! Logging set-up, decision counters, and the Prometheus text rendering of them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{LogConfig, LogFormat};
use crate::decision::{Decision, DenyReason};
use crate::policy::store::PolicyStatus;

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

    fn label(self) -> &'static str {
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

/// Decision counters. Lock-free: one relaxed add per request.
#[derive(Debug, Default)]
pub struct Metrics {
    allowed: AtomicU64,
    denied: [AtomicU64; DenyReason::ALL.len()],
    /// Denials answered with an allow by `policy.dry_run`, by reason.
    dry_run_allowed: [AtomicU64; DenyReason::ALL.len()],
    decision_hits: AtomicU64,
    decision_misses: AtomicU64,
    decision_uncacheable: AtomicU64,
    minted: [AtomicU64; MintResult::ALL.len()],
    exchanges: [AtomicU64; ExchangeResult::ALL.len()],
    evaluated_aside: AtomicU64,
}

// === impl Metrics ===

impl Metrics {
    pub fn record(&self, decision: &Decision) {
        match decision {
            Decision::Allow(_) => {
                self.allowed.fetch_add(1, Ordering::Relaxed);
            }
            Decision::Deny(d) => {
                if let Some(c) = self.denied.get(d.reason as usize) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn mint(&self, result: MintResult) {
        if let Some(c) = self.minted.get(result as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn minted(&self, result: MintResult) -> u64 {
        self.minted
            .get(result as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn exchange(&self, result: ExchangeResult) {
        if let Some(c) = self.exchanges.get(result as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn exchanges(&self, result: ExchangeResult) -> u64 {
        self.exchanges
            .get(result as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// An evaluation outgrew its slice of a serving thread and moved off it.
    pub fn evaluated_aside(&self) {
        self.evaluated_aside.fetch_add(1, Ordering::Relaxed);
    }

    pub fn decision_cache_hit(&self) {
        self.decision_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn decision_cache_miss(&self) {
        self.decision_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The policy reads time or randomness: its decisions are never cached.
    pub fn decision_cache_uncacheable(&self) {
        self.decision_uncacheable.fetch_add(1, Ordering::Relaxed);
    }

    /// (hits, misses, uncacheable) of the decision cache.
    pub fn decision_cache(&self) -> (u64, u64, u64) {
        (
            self.decision_hits.load(Ordering::Relaxed),
            self.decision_misses.load(Ordering::Relaxed),
            self.decision_uncacheable.load(Ordering::Relaxed),
        )
    }

    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// A denial for `reason` answered with an allow (`policy.dry_run`).
    pub fn dry_run_allowed(&self, reason: DenyReason) {
        if let Some(c) = self.dry_run_allowed.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dry_run_allowed_count(&self, reason: DenyReason) -> u64 {
        self.dry_run_allowed
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn denied(&self, reason: DenyReason) -> u64 {
        self.denied
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self, ready: bool, policy: &PolicyStatus) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "onbehalf_decisions_total",
            "counter",
            "Check decisions by outcome and reason.",
        );
        let _ = writeln!(
            out,
            "onbehalf_decisions_total{{decision=\"allow\",reason=\"policy\"}} {}",
            self.allowed()
        );
        for reason in DenyReason::ALL {
            let _ = writeln!(
                out,
                "onbehalf_decisions_total{{decision=\"deny\",reason=\"{}\"}} {}",
                reason.label(),
                self.denied(reason)
            );
        }
        family(
            &mut out,
            "onbehalf_dry_run_allowed_total",
            "counter",
            "Denials answered with an allow by policy.dry_run, by the reason of the would-be denial (also counted in onbehalf_decisions_total).",
        );
        for reason in DenyReason::ALL {
            let _ = writeln!(
                out,
                "onbehalf_dry_run_allowed_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.dry_run_allowed_count(reason)
            );
        }
        family(
            &mut out,
            "onbehalf_ready",
            "gauge",
            "1 once the policy and every issuer's keys have loaded.",
        );
        let _ = writeln!(out, "onbehalf_ready {}", u8::from(ready));
        let (hits, misses, uncacheable) = self.decision_cache();
        family(
            &mut out,
            "onbehalf_decision_cache_total",
            "counter",
            "Decision cache lookups by result: hit, miss (not cached yet), uncacheable (the policy reads time or randomness).",
        );
        for (result, n) in [
            ("hit", hits),
            ("miss", misses),
            ("uncacheable", uncacheable),
        ] {
            let _ = writeln!(
                out,
                "onbehalf_decision_cache_total{{result=\"{result}\"}} {n}"
            );
        }
        family(
            &mut out,
            "onbehalf_minted_tokens_total",
            "counter",
            "Allows with minting on, by result: signed (a new upstream token), reused (one minted for the same decision), no_grant (the result had no grant), failed (denied).",
        );
        for result in MintResult::ALL {
            let _ = writeln!(
                out,
                "onbehalf_minted_tokens_total{{result=\"{}\"}} {}",
                result.label(),
                self.minted(result)
            );
        }
        family(
            &mut out,
            "onbehalf_token_exchanges_total",
            "counter",
            "Token exchanges (POST /token) by result: issued, or the OAuth error code answered.",
        );
        for result in ExchangeResult::ALL {
            let _ = writeln!(
                out,
                "onbehalf_token_exchanges_total{{result=\"{}\"}} {}",
                result.label(),
                self.exchanges(result)
            );
        }
        family(
            &mut out,
            "onbehalf_policy_evaluations_moved_total",
            "counter",
            "Evaluations that outgrew policy.inline_budget on a serving thread and ran again off it.",
        );
        let _ = writeln!(
            out,
            "onbehalf_policy_evaluations_moved_total {}",
            self.evaluated_aside.load(Ordering::Relaxed)
        );
        family(
            &mut out,
            "onbehalf_policy_interpreter_fallbacks_total",
            "counter",
            "Evaluations the register VM could not run (for a reason other than a limit), answered by the interpreter.",
        );
        let _ = writeln!(
            out,
            "onbehalf_policy_interpreter_fallbacks_total {}",
            crate::policy::interpreter_fallbacks()
        );
        let counters = [
            (
                "onbehalf_policy_activations_total",
                "Policy bundles activated.",
                policy.activations,
            ),
            (
                "onbehalf_policy_failures_total",
                "Policy bundles rejected or not fetched; the last good policy kept serving.",
                policy.failures,
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(
            &mut out,
            "onbehalf_policy_last_load_ok",
            "gauge",
            "1 when the last policy load succeeded, 0 when it failed.",
        );
        let ok = policy.last_error.is_none() && policy.revision.is_some();
        let _ = writeln!(out, "onbehalf_policy_last_load_ok {}", u8::from(ok));
        if let Some(revision) = &policy.revision {
            family(
                &mut out,
                "onbehalf_policy_revision_info",
                "gauge",
                "The active policy revision and generation.",
            );
            let _ = writeln!(
                out,
                "onbehalf_policy_revision_info{{revision=\"{}\",generation=\"{}\"}} 1",
                label_value(revision),
                policy.generation
            );
        }
        out
    }
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a Prometheus label value.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Installs the global `tracing` subscriber: JSON lines or text, to stderr.
pub fn init_logging(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, `check` after `serve` set-up) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
