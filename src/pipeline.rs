//! The decision pipeline, shared by the gRPC server and `onbehalf check`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use regorus::Value;

use crate::authn::{self, Authenticated, AuthnError, Verifier};
use crate::cache::{DecisionCache, Digest, sha256, token_digest};
use crate::config::WithoutGrant;
use crate::config::{Config, HeaderNames};
use crate::decision::{Allow, Decision, DenyReason};
use crate::input::{CheckInput, TokenParts};
use crate::mint::{MintError, MintRequest, Minted, Minter, Upstream};
use crate::policy::{PolicyError, PolicySnapshot, PolicyStore, Verdict};
use crate::telemetry::{Metrics, MintResult};

/// Everything a decision needs: settings, keys, the current policy, and counters.
pub struct Authorizer {
    token_header: String,
    identity_headers: HeaderNames,
    verifier: Verifier,
    policies: Arc<PolicyStore>,
    decisions: Option<DecisionCache<Arc<Decision>>>,
    minter: Option<Arc<Minter>>,
    metrics: Metrics,
    ready: AtomicBool,
}

/// A decision with what led to it, for logs and `onbehalf check`.
#[derive(Debug)]
pub struct Outcome {
    pub decision: Arc<Decision>,
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
}

// === impl Authorizer ===

impl Authorizer {
    pub fn new(
        config: &Config,
        verifier: Verifier,
        policies: Arc<PolicyStore>,
        minter: Option<Arc<Minter>>,
    ) -> Authorizer {
        Authorizer {
            token_header: config.authn.header.clone(),
            identity_headers: config.headers.clone(),
            verifier,
            policies,
            decisions: config
                .cache
                .decisions
                .enabled
                .then(|| DecisionCache::new(&config.cache.decisions)),
            minter,
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
        }
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn decision_cache(&self) -> Option<&DecisionCache<Arc<Decision>>> {
        self.decisions.as_ref()
    }

    /// The upstream token minter, when `mint.enabled`.
    pub fn minter(&self) -> Option<&Arc<Minter>> {
        self.minter.as_ref()
    }

    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// Ready once a policy is active and every issuer's keys loaded once; then stays ready.
    pub fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let ready = self.policies.load().is_some() && self.verifier.all_keys_loaded();
        if ready {
            self.ready.store(true, Ordering::Release);
        }
        ready
    }

    /// Decides one request. The phases run in this order because each needs the one before:
    /// authentication yields the identities that the policy input is built from, and only a
    /// verified token may reach the policy.
    pub async fn decide(&self, input: &CheckInput<'_>) -> Outcome {
        // One policy snapshot for the whole request, so a swap cannot mix two revisions.
        let Some(snapshot) = self.policies.load() else {
            return self.denied(DenyReason::Unavailable);
        };
        let policies = &snapshot.policies;

        let authn::Verified {
            auth,
            parts,
            digest,
        } = match self.authenticate(input).await {
            Ok(verified) => verified,
            Err(AuthnError::KeysUnavailable) => return self.denied(DenyReason::Unavailable),
            Err(e) => return self.denied(DenyReason::Unauthenticated(e)),
        };

        let (decision, document, result) = self.evaluate(&snapshot, input, &auth, parts);
        let mut identity = self.identity(&auth);
        let mut minted = None;
        // Minting comes last: only an allow gets a token, and only for what it granted.
        let decision = match (&*decision, &self.minter) {
            (Decision::Allow(allow), Some(minter)) => {
                let digest = digest.or_else(|| {
                    // Without the token cache, the digest is made here, and only for reuse.
                    minter
                        .reuses()
                        .then(|| authn::extract_bearer(input.header(&self.token_header)).ok())
                        .flatten()
                        .map(token_digest)
                });
                let upstream =
                    self.upstream_token(minter, allow, input, &auth, snapshot.generation, digest);
                match upstream {
                    Ok(Some(token)) => {
                        identity.push((
                            minter.header().to_string(),
                            Some(minter.header_value(&token.minted.token)),
                        ));
                        // The delegation token never reaches the upstream.
                        if minter.header() != self.token_header {
                            identity.push((self.token_header.clone(), None));
                        }
                        minted = Some(token.minted);
                        decision
                    }
                    Ok(None) => decision,
                    Err(reason) => Arc::new(Decision::deny(reason)),
                }
            }
            _ => decision,
        };
        Outcome {
            identity,
            minted,
            subject: Some(auth.subject.clone()),
            actor: auth.actor().cloned(),
            depth: auth.chain.len(),
            revision: Some(policies.revision().clone()),
            decision,
            input: document,
            result,
        }
    }

    /// The policy's decision: from the decision cache when the policy allows it and an entry
    /// exists, else evaluated (and cached unless evaluation failed). Returns the decision, the
    /// input document when it was built, and the policy's result. `parts` are the token's
    /// document parts when verification just built them.
    fn evaluate(
        &self,
        snapshot: &PolicySnapshot,
        input: &CheckInput<'_>,
        auth: &Authenticated,
        mut parts: Option<TokenParts>,
    ) -> (Arc<Decision>, Option<Value>, Option<Value>) {
        let policies = &snapshot.policies;
        let reads = policies.reads();
        let cache = self
            .decisions
            .as_ref()
            .filter(|_| reads.nondeterministic.is_empty());
        // Token parts built for the key are reused by the evaluation on a miss.
        let key = cache.map(|_| {
            crate::key::decision_key(
                snapshot.generation,
                &reads.input_paths,
                input,
                auth,
                &mut parts,
            )
        });
        if let (Some(cache), Some(key)) = (cache, &key) {
            if let Some(hit) = cache.get(snapshot.generation, key) {
                self.metrics.decision_cache_hit();
                return (hit, None, None);
            }
            self.metrics.decision_cache_miss();
        } else if self.decisions.is_some() {
            self.metrics.decision_cache_uncacheable();
        }
        let document = input.document(parts.unwrap_or_else(|| auth.parts()));
        let (decision, result) = match policies.evaluate(document.clone()) {
            Err(e @ PolicyError::Timeout { .. }) => {
                tracing::warn!(error = %e, "Policy evaluation timed out; denying");
                let d = Decision::deny(DenyReason::EvalTimeout);
                return (Arc::new(d), Some(document), None);
            }
            Err(e) => {
                tracing::error!(error = %e, "Policy evaluation failed; denying");
                let d = Decision::deny(DenyReason::Internal(e.to_string()));
                return (Arc::new(d), Some(document), None);
            }
            Ok(result) => match Verdict::try_from(&result) {
                Ok(verdict) => (Arc::new(Decision::from_verdict(verdict)), result),
                Err(e) => {
                    tracing::warn!(error = %e, policy.query = policies.query(), "Denying on policy result");
                    (
                        Arc::new(Decision::deny(DenyReason::PolicyResult(e.to_string()))),
                        result,
                    )
                }
            },
        };
        if let (Some(cache), Some(key)) = (cache, key) {
            // A decision is a function of the policy result: equal results share one.
            let interned = serde_json::to_vec(&result).ok().map(|json| sha256(&json));
            cache.insert(key, decision.clone(), interned, auth.expires_at);
        }
        (decision, Some(document), Some(result))
    }

    /// The minted token for an allow; `Ok(None)` when the result has no grant and
    /// `mint.without_grant` is `pass`.
    fn upstream_token(
        &self,
        minter: &Minter,
        allow: &Allow,
        input: &CheckInput<'_>,
        auth: &Authenticated,
        generation: u64,
        digest: Option<Digest>,
    ) -> Result<Option<Upstream>, DenyReason> {
        let Some(grant) = &allow.grant else {
            self.metrics.mint(MintResult::NoGrant);
            return match minter.without_grant() {
                WithoutGrant::Pass => Ok(None),
                WithoutGrant::Deny => {
                    tracing::warn!(
                        authz.subject = %auth.subject,
                        "The policy allowed without a grant and mint.without_grant is deny; denying"
                    );
                    Err(DenyReason::NoGrant)
                }
            };
        };
        let request = MintRequest {
            auth,
            grant,
            generation,
            token_digest: digest.as_ref(),
            request_id: input.header("x-request-id"),
            method: input.method(),
            path: input.path(),
            source: input.source_address(),
        };
        match minter.mint(&request) {
            Ok(upstream) => {
                self.metrics.mint(match upstream.reused {
                    true => MintResult::Reused,
                    false => MintResult::Signed,
                });
                Ok(Some(upstream))
            }
            Err(MintError::Expiring) => {
                self.metrics.mint(MintResult::Failed);
                Err(DenyReason::Unauthenticated(AuthnError::Expired))
            }
            Err(e) => {
                self.metrics.mint(MintResult::Failed);
                tracing::error!(error = %e, "Minting the upstream token failed; denying");
                Err(DenyReason::Internal(e.to_string()))
            }
        }
    }

    async fn authenticate(&self, input: &CheckInput<'_>) -> Result<authn::Verified, AuthnError> {
        let token = authn::extract_bearer(input.header(&self.token_header))?;
        self.verifier.verify(token).await
    }

    /// A denial before the policy ran.
    pub fn denied(&self, reason: DenyReason) -> Outcome {
        Outcome {
            decision: Arc::new(Decision::deny(reason)),
            input: None,
            result: None,
            identity: Vec::new(),
            subject: None,
            actor: None,
            depth: 0,
            revision: None,
            minted: None,
        }
    }

    fn identity(&self, auth: &Authenticated) -> Vec<(String, Option<String>)> {
        let names = &self.identity_headers;
        let [subject, actor, chain] = auth.identity();
        vec![
            (names.subject.clone(), subject),
            (names.actor.clone(), actor),
            (names.chain.clone(), chain),
        ]
    }
}
