//! The decision pipeline, shared by the gRPC server and `onbehalf check`.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use regorus::Value;
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::authn::{self, Authenticated, AuthnError, Verifier};
use crate::cache::{DecisionCache, sha256, token_digest};
use crate::config::{Config, HeaderNames, WithoutGrant};
use crate::decision::{Decision, DenyReason};
use crate::decision_log::DecisionLog;
use crate::input::{CheckInput, GrpcBodies, InputError, TokenParts};
use crate::key::KeyError;
use crate::mint::{MintError, MintRequest, Minted, Minter};
use crate::policy::{Budget, PolicyError, PolicySnapshot, PolicyStore, Verdict, VerdictError};
use crate::readiness::{Dependency, Readiness};
use crate::state::StateCell;
use crate::telemetry::{EvalEngine, Metrics, MintResult, traces};

/// Everything a decision needs: settings, keys, the current policy, and counters.
pub struct Authorizer {
    token_header: String,
    /// `authn.required`: when false, a request without a bearer token is judged anonymous.
    authn_required: bool,
    /// Decodes gRPC request bodies (`policy.proto_descriptors`).
    grpc_bodies: Option<Arc<GrpcBodies>>,
    /// `policy.dry_run` and `authn.dry_run`.
    dry_run: (bool, bool),
    identity_headers: HeaderNames,
    verifier: Verifier,
    policies: Arc<PolicyStore>,
    /// The policy and every issuer's keys, as one snapshot per Check.
    state: Arc<StateCell>,
    decisions: Option<DecisionCache<Arc<Decided>>>,
    /// Decision logs in OPA's shape, when a sink is configured.
    decision_log: Option<DecisionLog>,
    minter: Option<Arc<Minter>>,
    /// An evaluation's slice of a serving thread, and its whole time limit elsewhere.
    inline_budget: Duration,
    eval_timeout: Duration,
    /// Evaluations that outgrew their slice run on blocking threads, this many at once.
    eval_slots: Arc<Semaphore>,
    metrics: Metrics,
    readiness: Readiness,
}

/// A decision-cache entry: the decision and the policy result it came from (for the
/// decision log of a hit).
#[derive(Debug)]
pub struct Decided {
    pub decision: Arc<Decision>,
    pub result: Value,
}

/// A decision with what led to it, for logs and `onbehalf check`.
#[derive(Debug)]
pub struct Outcome {
    pub decision: Arc<Decision>,
    /// Why the decision is not the policy's own answer, when it is not.
    pub error: Option<CheckError>,
    /// The Rego input document, when the request got as far as the policy.
    pub input: Option<Value>,
    /// The policy's raw result, when it was evaluated.
    pub result: Option<Value>,
    /// Identity headers to set on the upstream request (`None`: remove it).
    pub identity: Vec<(String, Option<String>)>,
    pub subject: Option<Arc<str>>,
    pub actor: Option<Arc<str>>,
    pub depth: usize,
    /// Revision of the policy that decided.
    pub revision: Option<Arc<str>>,
    /// The upstream token minted for an allow.
    pub minted: Option<Arc<Minted>>,
    /// The rule that decided, when decision logs are on.
    pub query: Option<String>,
    /// Whether the decision came from the decision cache.
    pub cached: bool,
}

/// The decision an `Outcome` holds until its phases have run (one, shared: a Check allocates
/// nothing for it).
static UNDECIDED: LazyLock<Arc<Decision>> =
    LazyLock::new(|| Arc::new(Decision::deny(DenyReason::Internal)));

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            decision: UNDECIDED.clone(),
            error: None,
            input: None,
            result: None,
            identity: Vec::new(),
            subject: None,
            actor: None,
            depth: 0,
            revision: None,
            minted: None,
            query: None,
            cached: false,
        }
    }
}

// === impl Authorizer ===

impl Authorizer {
    pub fn new(
        config: &Config,
        verifier: Verifier,
        policies: Arc<PolicyStore>,
        minter: Option<Arc<Minter>>,
    ) -> Authorizer {
        let readiness = readiness(&policies, &verifier);
        let state = StateCell::watch(&policies, &verifier);
        Authorizer {
            token_header: config.authn.header.clone(),
            authn_required: config.authn.required,
            grpc_bodies: None,
            decision_log: None,
            dry_run: (config.policy.dry_run, config.authn.dry_run),
            identity_headers: config.headers.clone(),
            verifier,
            policies,
            state,
            decisions: config
                .cache
                .decisions
                .enabled
                .then(|| DecisionCache::new(&config.cache.decisions)),
            minter,
            inline_budget: config.policy.inline_budget.0,
            eval_timeout: config.policy.eval_timeout.0,
            eval_slots: Arc::new(Semaphore::new(crate::serving::count(
                config.policy.eval_threads,
            ))),
            metrics: Metrics::default(),
            readiness,
        }
    }

    /// Writes decision logs through `log`.
    pub fn with_decision_log(mut self, log: Option<DecisionLog>) -> Authorizer {
        self.decision_log = log;
        self
    }

    /// The decision log, when a sink is configured.
    pub fn decision_log(&self) -> Option<&DecisionLog> {
        self.decision_log.as_ref()
    }

    /// Decodes gRPC request bodies with `bodies` (loaded from `policy.proto_descriptors`).
    pub fn with_grpc_bodies(mut self, bodies: GrpcBodies) -> Authorizer {
        self.grpc_bodies = Some(Arc::new(bodies));
        self
    }

    /// What decodes gRPC request bodies, when descriptors are configured.
    pub fn grpc_bodies(&self) -> Option<&GrpcBodies> {
        self.grpc_bodies.as_deref()
    }

    /// Whether a dry run answers `decision` with an allow: the policy's denials and the
    /// failures of deciding (a result, a timeout, a grant, an internal error); a missing or
    /// unverified token only with `authn.dry_run`; never a request onbehalf could not read,
    /// a route misconfigured, or a sidecar not ready (those are not the policy's to try).
    pub fn dry_run_passes(&self, decision: &Decision) -> bool {
        match decision {
            Decision::Allow(_) => true,
            Decision::Deny(d) => match d.reason {
                DenyReason::Policy
                | DenyReason::PolicyResult
                | DenyReason::EvalTimeout
                | DenyReason::NoGrant
                | DenyReason::Internal => true,
                DenyReason::MissingToken | DenyReason::InvalidToken => self.dry_run.1,
                DenyReason::BadRequest | DenyReason::RouteConfig | DenyReason::Unavailable => false,
            },
        }
    }

    /// Whether `policy.dry_run` is on (a route may say otherwise: `onbehalf.dry_run`).
    pub fn dry_run(&self) -> bool {
        self.dry_run.0
    }

    /// The identity headers to remove when no identity was established: neither the client
    /// nor anything else may set them then. With minting on, the upstream token's header
    /// too: only onbehalf sets it, so a client's copy (a replayed minted token) never passes.
    /// When that is the bearer header itself, a bearer credential in it was refused already,
    /// and another scheme (`Basic`) passes for the upstream.
    pub fn no_identity(&self) -> Vec<(String, Option<String>)> {
        self.identity_values([None, None, None])
    }

    /// The identity headers with `values` (subject, actor, chain; `None` removes), and with
    /// minting on the upstream token's header, removed until a minted token is set in it.
    fn identity_values(&self, values: [Option<String>; 3]) -> Vec<(String, Option<String>)> {
        let names = &self.identity_headers;
        let [subject, actor, chain] = values;
        let mut headers = vec![
            (names.subject.clone(), subject),
            (names.actor.clone(), actor),
            (names.chain.clone(), chain),
        ];
        if let Some(minter) = &self.minter
            && minter.header() != self.token_header
        {
            headers.push((minter.header().to_string(), None));
        }
        headers
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn decision_cache(&self) -> Option<&DecisionCache<Arc<Decided>>> {
        self.decisions.as_ref()
    }

    /// The upstream token minter, when `mint.enabled`.
    pub fn minter(&self) -> Option<&Arc<Minter>> {
        self.minter.as_ref()
    }

    /// The policy and every issuer's keys, one snapshot per load.
    pub fn state(&self) -> &Arc<StateCell> {
        &self.state
    }

    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The readiness latch: the policy and every issuer's keys, loaded once.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Decides one request (`respond` in `grpc.rs` reads it, logs it once and answers).
    pub async fn decide(&self, input: &CheckInput<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        let decision = match self.phases(input, &mut outcome).await {
            Ok(decision) => decision,
            Err(e) => {
                let decision = Arc::new(rescue(&e));
                outcome.error = Some(e);
                decision
            }
        };
        outcome.decision = decision;
        outcome
    }

    /// The phases of one Check, in the order they must run: authentication yields the
    /// identities the policy input is built from (only a verified token may reach the policy);
    /// the policy decides, from the decision cache when it can; only then, and only for an
    /// allow, is an upstream token minted for what the policy granted. What each phase learns
    /// is recorded in `outcome` for the decision log, also when a later phase fails.
    async fn phases(
        &self,
        input: &CheckInput<'_>,
        outcome: &mut Outcome,
    ) -> Result<Arc<Decision>, CheckError> {
        // One snapshot for the whole request: the keys that verify the token and the policy
        // that decides are of one moment, whatever is swapped meanwhile.
        let state = self.state.load();
        let snapshot = state.policy.clone().ok_or(CheckError::NotReady)?;
        outcome.revision = Some(snapshot.policies.revision().clone());

        // The route's settings, checked before any token work: a misspelt key or value is
        // a misconfigured route, never the default silently.
        input
            .check_route_settings()
            .map_err(CheckError::RoutePolicy)?;
        let rule = input.route_setting("policy");
        if snapshot.select(rule).is_none() {
            return Err(CheckError::RoutePolicy(format!(
                "onbehalf.policy: {} is not in policy.queries",
                rule.unwrap_or_default()
            )));
        }
        let required = match input.route_setting("authn_required") {
            Some("false") => false,
            Some("true") => true,
            _ => self.authn_required,
        };
        let token = match authn::extract_bearer(input.header(&self.token_header)) {
            // No bearer token at all (no header, or another scheme the policy may judge):
            // anonymous, when allowed. A bearer token that does not verify never is.
            Err(AuthnError::Missing | AuthnError::NotBearer) if !required => {
                return self.anonymous(&snapshot, input, outcome).await;
            }
            token => token?,
        };
        let verify = traces::phase("verify_token");
        let verified = self
            .verifier
            .verify_with(&*state, token)
            .instrument(verify.clone())
            .await;
        if !verify.is_none() {
            verify.record(
                "onbehalf.result",
                match &verified {
                    Ok(_) => "verified",
                    Err(_) => "refused",
                },
            );
            if let Ok(v) = &verified {
                // Parts are built while verifying; a token cache hit has none.
                verify.record(
                    "onbehalf.cache",
                    if v.parts.is_none() { "hit" } else { "miss" },
                );
            }
        }
        drop(verify);
        let verified = verified?;
        let auth = verified.auth;
        outcome.subject = Some(auth.subject.clone());
        outcome.actor = auth.actor().cloned();
        outcome.depth = auth.chain.len();

        let decision = self
            .evaluate(&snapshot, input, Some(&auth), verified.parts, outcome)
            .await?;
        outcome.identity = self.identity(&auth);

        let (Decision::Allow(allow), Some(minter)) = (&*decision, &self.minter) else {
            return Ok(decision);
        };
        let Some(grant) = &allow.grant else {
            self.metrics.mint(MintResult::NoGrant);
            return match minter.without_grant() {
                WithoutGrant::Pass => Ok(decision),
                WithoutGrant::Deny => Err(CheckError::NoGrant),
            };
        };
        // Reuse is keyed by the token's digest: the token cache's, or made here for it.
        let digest = verified
            .digest
            .or_else(|| minter.reuses().then(|| token_digest(token)));
        let request = MintRequest {
            auth: &auth,
            grant,
            generation: snapshot.generation,
            token_digest: digest.as_ref(),
            request_id: input.header("x-request-id"),
            method: input.method(),
            path: input.path(),
            source: input.source_address(),
            route_audience: input.route_setting("mint_audience"),
        };
        let span = traces::phase("mint");
        let upstream = span.in_scope(|| minter.mint(&request)).inspect_err(|_| {
            self.metrics.mint(MintResult::Failed);
            span.record("onbehalf.result", "failed");
        })?;
        let result = match upstream.reused {
            true => MintResult::Reused,
            false => MintResult::Signed,
        };
        self.metrics.mint(result);
        span.record("onbehalf.result", result.label());
        drop(span);
        let minted = Some(minter.header_value(&upstream.minted.token));
        match outcome
            .identity
            .iter_mut()
            .find(|(name, _)| name == minter.header())
        {
            Some(entry) => entry.1 = minted,
            None => outcome.identity.push((minter.header().to_string(), minted)),
        }
        // The delegation token never reaches the upstream.
        if minter.header() != self.token_header {
            outcome.identity.push((self.token_header.clone(), None));
        }
        outcome.minted = Some(upstream.minted);
        Ok(decision)
    }

    /// A request without a token, judged by the policy with `subject`, `actor`, `delegation`
    /// and `token` null. Identity headers are removed (a client cannot forge them) and
    /// nothing is minted: an upstream token needs someone to act for. With minting on, such
    /// an allow follows `mint.without_grant`, as an allow without a grant does.
    async fn anonymous(
        &self,
        snapshot: &Arc<PolicySnapshot>,
        input: &CheckInput<'_>,
        outcome: &mut Outcome,
    ) -> Result<Arc<Decision>, CheckError> {
        let decision = self
            .evaluate(
                snapshot,
                input,
                None,
                Some(TokenParts::anonymous()),
                outcome,
            )
            .await?;
        outcome.identity = self.no_identity();
        if let Some(minter) = &self.minter {
            // An allow that brings no upstream token follows mint.without_grant.
            if decision.is_allow() && minter.without_grant() == WithoutGrant::Deny {
                self.metrics.mint(MintResult::NoGrant);
                return Err(CheckError::NoGrant);
            }
        }
        Ok(decision)
    }

    /// The policy's decision: from the decision cache when the policy allows it and an entry
    /// exists, else evaluated (and cached unless evaluation failed). The input document and
    /// the policy's result go into `outcome` when they were built. `parts` are the token's
    /// document parts when verification just built them (or the anonymous ones, without
    /// `auth`).
    async fn evaluate(
        &self,
        snapshot: &Arc<PolicySnapshot>,
        input: &CheckInput<'_>,
        auth: Option<&Authenticated>,
        mut parts: Option<TokenParts>,
        outcome: &mut Outcome,
    ) -> Result<Arc<Decision>, CheckError> {
        let rule = input.route_setting("policy");
        let policies = snapshot
            .select(rule)
            .ok_or_else(|| CheckError::RoutePolicy(rule.unwrap_or_default().to_string()))?;
        let reads = policies.reads();
        let cache = self
            .decisions
            .as_ref()
            .filter(|_| reads.nondeterministic.is_empty());
        let lookup = match self.decisions.is_some() {
            true => traces::phase("decision_cache"),
            false => tracing::Span::none(),
        };
        // Token parts built for the key are reused by the evaluation on a miss.
        let key = match cache {
            Some(_) => Some(crate::key::decision_key(
                policies.id(),
                &reads.input_paths,
                input,
                auth,
                &mut parts,
            )?),
            None => None,
        };
        if self.decision_log.is_some() {
            outcome.query = Some(policies.query().to_string());
        }
        if let (Some(cache), Some(key)) = (cache, &key) {
            if let Some(hit) = cache.get(snapshot.generation, key) {
                self.metrics.decision_cache_hit();
                lookup.record("onbehalf.result", "hit");
                outcome.cached = true;
                // The decision log records the input of a hit too: built only then.
                if self.decision_log.is_some() {
                    let parts = match (parts, auth) {
                        (Some(parts), _) => parts,
                        (None, Some(auth)) => auth.parts().map_err(CheckError::Claims)?,
                        (None, None) => TokenParts::anonymous(),
                    };
                    outcome.input = Some(input.document(parts));
                    outcome.result = Some(hit.result.clone());
                }
                return Ok(hit.decision.clone());
            }
            self.metrics.decision_cache_miss();
            lookup.record("onbehalf.result", "miss");
        } else if self.decisions.is_some() {
            self.metrics.decision_cache_uncacheable();
            lookup.record("onbehalf.result", "uncacheable");
        }
        drop(lookup);
        let parts = match (parts, auth) {
            (Some(parts), _) => parts,
            (None, Some(auth)) => auth.parts().map_err(CheckError::Claims)?,
            (None, None) => TokenParts::anonymous(),
        };
        let document = input.document(parts);
        outcome.input = Some(document.clone());
        let engine = match policies.uses_vm() {
            true => EvalEngine::Vm,
            false => EvalEngine::Interpreter,
        };
        let span = traces::phase("evaluate");
        span.record("onbehalf.engine", engine.label());
        let started = Instant::now();
        let inline = span
            .in_scope(|| policies.evaluate(document.clone(), Budget::Inline(self.inline_budget)));
        let result = match inline {
            Err(PolicyError::OverBudget) => {
                span.record("onbehalf.moved", true);
                let rule = rule.map(str::to_string);
                self.evaluate_aside(snapshot.clone(), rule, document)
                    .instrument(span.clone())
                    .await
            }
            result => result.map_err(CheckError::Policy),
        };
        self.metrics.evaluation_took(engine, started.elapsed());
        drop(span);
        let result = result?;
        outcome.result = Some(result.clone());
        let verdict = Verdict::try_from(&result)?;
        let decision = Arc::new(Decision::from_verdict(verdict));
        if let (Some(cache), Some(key)) = (cache, key) {
            // A decision is a function of the policy result: equal results share one.
            let interned = serde_json::to_vec(&result).ok().map(|json| sha256(&json));
            cache.insert(
                snapshot.generation,
                key,
                Arc::new(Decided {
                    decision: decision.clone(),
                    result,
                }),
                interned,
                auth.and_then(|a| a.expires_at),
            );
        }
        Ok(decision)
    }

    /// Evaluates off the serving thread, with the whole `eval_timeout`: the requests that
    /// share the serving thread go on meanwhile. At most `policy.eval_threads` such
    /// evaluations run at once; more wait their turn (the request waits, not the thread).
    async fn evaluate_aside(
        &self,
        snapshot: Arc<PolicySnapshot>,
        rule: Option<String>,
        document: Value,
    ) -> Result<Value, CheckError> {
        self.metrics.evaluated_aside();
        let _slot = self
            .eval_slots
            .acquire()
            .await
            .map_err(|e| CheckError::Aside(e.to_string()))?;
        let limit = Budget::Full(self.eval_timeout);
        tokio::task::spawn_blocking(move || {
            yield_to_serving_threads();
            match snapshot.select(rule.as_deref()) {
                Some(policies) => policies.evaluate(document, limit),
                None => Err(PolicyError::Undefined(rule.unwrap_or_default())),
            }
        })
        .await
        .map_err(|e| CheckError::Aside(e.to_string()))?
        .map_err(CheckError::Policy)
    }

    /// A denial before the request could be read.
    pub fn unreadable(&self, e: InputError) -> Outcome {
        let e = CheckError::Input(e);
        Outcome {
            decision: Arc::new(rescue(&e)),
            error: Some(e),
            ..Outcome::default()
        }
    }

    /// The identity headers of `auth`; with minting on, also the upstream token's header,
    /// removed until a minted token is set in it: a client's copy never passes, whether
    /// nothing is minted (`mint.without_grant: pass`) or a dry run lets a denial through.
    fn identity(&self, auth: &Authenticated) -> Vec<(String, Option<String>)> {
        self.identity_values(auth.identity())
    }
}

/// Lowers the calling thread's CPU priority (Linux `nice` 10, once per thread): an
/// evaluation that outgrew its slice yields the cores to the serving threads, so a runaway
/// policy slows itself rather than every other request. Only the blocking threads of the
/// serving runtimes run it, and they run nothing but such evaluations.
fn yield_to_serving_threads() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; with PRIO_PROCESS and a thread id,
        // setpriority changes that one thread. A failure leaves the priority as it was.
        let done = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 10)
        };
        if done != 0 {
            tracing::debug!("Cannot lower the evaluation thread's priority");
        }
    }
}

/// Ready once a policy is active and every issuer's keys loaded once.
fn readiness(policies: &Arc<PolicyStore>, verifier: &Verifier) -> Readiness {
    let store = policies.clone();
    let why = policies.clone();
    let mut dependencies = vec![Dependency::new(
        "the policy",
        move || store.load().is_some(),
        move || why.status().last_error,
    )];
    for issuer in verifier.issuers() {
        let keys = issuer.clone();
        dependencies.push(Dependency::new(
            format!("the keys of {}", issuer.issuer()),
            move || keys.loaded(),
            || None,
        ));
    }
    Readiness::new(dependencies)
}

/// Why a Check could not end in the policy's own answer, by phase.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("the request cannot be read: {0}")]
    Input(#[from] InputError),
    #[error("no policy is active yet")]
    NotReady,
    #[error(transparent)]
    Authn(#[from] AuthnError),
    #[error("the verified claims cannot be read again: {0}")]
    Claims(AuthnError),
    #[error("building the decision-cache key failed: {0}")]
    Key(#[from] KeyError),
    #[error("policy evaluation failed: {0}")]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Verdict(#[from] VerdictError),
    #[error("the evaluation thread failed: {0}")]
    Aside(String),
    #[error("the policy allowed without a grant and mint.without_grant is deny")]
    NoGrant,
    #[error("the route's settings (context_extensions): {0}")]
    RoutePolicy(String),
    #[error("minting the upstream token failed: {0}")]
    Mint(#[from] MintError),
}

/// The one place a failure becomes a decision. Everything not the client's fault fails
/// closed: 403 (or 503 while not ready), never an allow.
pub fn rescue(e: &CheckError) -> Decision {
    match e {
        CheckError::Input(e) => Decision::bad_request(&e.to_string()),
        CheckError::NotReady | CheckError::Authn(AuthnError::KeysUnavailable) => {
            Decision::deny(DenyReason::Unavailable)
        }
        CheckError::Authn(e) => Decision::invalid_token(e),
        // The delegation token expires before a minted token could live: as expired.
        CheckError::Mint(MintError::Expiring) => Decision::invalid_token(&AuthnError::Expired),
        CheckError::Policy(PolicyError::Timeout { .. }) => Decision::deny(DenyReason::EvalTimeout),
        CheckError::Verdict(_) => Decision::deny(DenyReason::PolicyResult),
        CheckError::NoGrant => Decision::deny(DenyReason::NoGrant),
        CheckError::RoutePolicy(_) => Decision::deny(DenyReason::RouteConfig),
        CheckError::Claims(_)
        | CheckError::Key(_)
        | CheckError::Policy(_)
        | CheckError::Aside(_)
        | CheckError::Mint(_) => Decision::deny(DenyReason::Internal),
    }
}
