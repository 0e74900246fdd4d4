//! RFC 8693 token exchange: a subject token (Alice's) and an actor token (the agent's) in,
//! a delegation token out — `sub` Alice, `act` the agent, nesting any earlier actors — whose
//! scopes, audience and lifetime the exchange policy decides, once, on purpose.
//!
//! The phases, in order, each refusing with the error RFC 6749 §5.2 / RFC 8693 §2.2.2 names:
//! the form (`form`), the actor token, the actor's rate limit, the subject token, `may_act`
//! and the depth limit, the policy, the requested scopes and targets against the policy's,
//! then signing. Tokens are verified by the sidecar's own `Verifier`, against
//! `authn.issuers`; nothing of a token is ever logged or echoed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json, json};
use tracing::Instrument as _;

use crate::authn::{Authenticated, AuthnError};
use crate::config::{Config, Interval};
use crate::identity::Party;
use crate::ids::random_id;
use crate::mint::{KeyRing, KeySettings, unix_now};
use crate::pipeline::Authorizer;
use crate::policy::PolicyError;
use crate::telemetry::{ExchangeResult, traces};

pub mod form;
pub mod http;
mod limit;

pub use form::TokenRequest;
use limit::RateLimiter;

/// A refused exchange: the OAuth error code and a description safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeError {
    pub code: ExchangeResult,
    pub description: String,
    /// For `slow_down`: when the actor may try again.
    pub retry_after: Option<Duration>,
}

/// An issued delegation token and what the response says of it.
pub struct Issued {
    pub access_token: String,
    pub issued_token_type: &'static str,
    pub expires_in: i64,
    pub scope: Vec<String>,
}

impl std::fmt::Debug for Issued {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("issued_token_type", &self.issued_token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// What one exchange was about, for its decision-log line. Never a token.
#[derive(Debug, Default)]
pub struct Record {
    pub subject: Option<Arc<str>>,
    pub actor: Option<Arc<str>>,
    pub depth: usize,
    pub requested_scope: Vec<String>,
    pub requested_audience: Vec<String>,
    pub issued_scope: Vec<String>,
    pub issued_audience: Vec<String>,
    pub jti: Option<String>,
    pub revision: Option<Arc<str>>,
}

/// Serves token exchanges.
pub struct Exchanger {
    issuer: Box<str>,
    query: Box<str>,
    require_may_act: bool,
    max_ttl: Duration,
    max_depth: usize,
    max_request_bytes: usize,
    eval_timeout: Duration,
    keys: Arc<KeyRing>,
    limiter: Option<RateLimiter>,
    /// Exchanges in flight: past it, new ones are answered 503 before any work.
    slots: tokio::sync::Semaphore,
    authorizer: Arc<Authorizer>,
}

/// Most exchanges worked on at once (each may verify two tokens and evaluate the policy on a
/// blocking thread); beyond it, `temporarily_unavailable` at once.
const MAX_IN_FLIGHT: usize = 64;

/// Claims never copied from an input token into an issued one by `subject_claims` or
/// `act_claims`: onbehalf sets them, or they describe the input token or how its holder
/// authenticated (which the agent holding the issued token did not do), not a party.
const RESERVED: [&str; 24] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "act",
    "may_act",
    "scope",
    "scp",
    "client_id",
    "azp",
    "cnf",
    "acr",
    "amr",
    "auth_time",
    "sid",
    "nonce",
    "at_hash",
    "c_hash",
    "token_use",
    "typ",
    "txn",
];

/// The policy's answer, read strictly.
struct Verdict {
    scopes: Vec<String>,
    audience: Vec<String>,
    ttl: Option<Duration>,
    act_claims: Vec<String>,
    subject_claims: Vec<String>,
}

// === impl ExchangeError ===

impl ExchangeError {
    pub fn new(code: ExchangeResult, description: impl Into<String>) -> ExchangeError {
        ExchangeError {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> ExchangeError {
        ExchangeError::new(ExchangeResult::InvalidRequest, description)
    }

    fn invalid_grant(description: impl Into<String>) -> ExchangeError {
        ExchangeError::new(ExchangeResult::InvalidGrant, description)
    }

    /// The HTTP status: 429 for the rate limit, 503 before the policy or keys load, 500 for
    /// onbehalf's own failures, 400 for every refusal of the request.
    pub fn status(&self) -> u16 {
        match self.code {
            ExchangeResult::SlowDown => 429,
            ExchangeResult::TemporarilyUnavailable => 503,
            ExchangeResult::ServerError => 500,
            _ => 400,
        }
    }

    /// A token that did not verify.
    fn token(which: &str, e: &AuthnError) -> ExchangeError {
        match e {
            AuthnError::KeysUnavailable => ExchangeError::new(
                ExchangeResult::TemporarilyUnavailable,
                format!("the {which}'s issuer keys are not available yet"),
            ),
            _ => ExchangeError::invalid_grant(format!("the {which} was refused: {e}")),
        }
    }
}

// === impl Exchanger ===

impl Exchanger {
    /// Builds the exchange service (`config.exchange`) over the sidecar's verifier and
    /// policy store.
    pub fn new(
        config: &Config,
        authorizer: Arc<Authorizer>,
    ) -> Result<Exchanger, crate::jose::KeyError> {
        let max_depth = config.authn.max_delegation_depth;
        let eval_timeout = config.policy.eval_timeout.0;
        let config = &config.exchange;
        let keys = KeyRing::load(KeySettings {
            section: "exchange",
            algorithm: &config.algorithm,
            key_file: config.key_file.as_deref(),
            key_id: config.key_id.as_deref(),
            retire_after: config.max_ttl.0,
        })?;
        Ok(Exchanger {
            issuer: config.issuer.as_str().into(),
            query: config.policy_query.as_str().into(),
            require_may_act: config.require_may_act,
            max_ttl: config.max_ttl.0,
            max_depth,
            max_request_bytes: config.max_request_bytes,
            eval_timeout,
            keys: Arc::new(keys),
            limiter: RateLimiter::new(&config.rate_limit),
            slots: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            authorizer,
        })
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// `<issuer>/<path>`: where a client reaches one of the endpoints.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.issuer.trim_end_matches('/'))
    }

    /// Runs one exchange, filling `record` as it learns who and what.
    pub async fn exchange(
        &self,
        req: &TokenRequest,
        record: &mut Record,
    ) -> Result<Issued, ExchangeError> {
        let Ok(_slot) = self.slots.try_acquire() else {
            return Err(ExchangeError {
                code: ExchangeResult::TemporarilyUnavailable,
                description: format!("more than {MAX_IN_FLIGHT} exchanges are in flight"),
                retry_after: Some(Duration::from_secs(1)),
            });
        };
        record.requested_scope = req.scope.clone();
        record.requested_audience = req.audience.iter().chain(&req.resource).cloned().collect();
        // One snapshot for the whole exchange: both tokens verify against the keys of one
        // moment, and the policy of that moment decides.
        let state = self.authorizer.state().load();
        let verifier = self.authorizer.verifier();
        let actor = verifier
            .verify_with(&*state, &req.actor_token)
            .instrument(traces::phase("verify_actor_token"))
            .await
            .map_err(|e| ExchangeError::token("actor_token", &e))?
            .auth;
        record.actor = Some(actor.subject.clone());
        // The actor token is the agent's own identity: a delegation token there would let
        // whoever holds one act as its subject, and drop its actors from the chain.
        if !actor.chain.is_empty() {
            return Err(ExchangeError::invalid_grant(
                "the actor_token carries act: present the agent's own token, not a delegation",
            ));
        }
        if let Some(limiter) = &self.limiter {
            let key = format!("{}\0{}", actor.issuer, actor.subject);
            if let Err(wait) = limiter.take(&key) {
                return Err(ExchangeError {
                    code: ExchangeResult::SlowDown,
                    description: "this actor exchanges tokens faster than its rate limit".into(),
                    retry_after: Some(wait),
                });
            }
        }
        let subject = verifier
            .verify_with(&*state, &req.subject_token)
            .instrument(traces::phase("verify_subject_token"))
            .await
            .map_err(|e| ExchangeError::token("subject_token", &e))?
            .auth;
        record.subject = Some(subject.subject.clone());
        let subject_claims = claims(&subject)?;
        let actor_claims = claims(&actor)?;
        // Verified already: the chain and may_act decode, within the depth limit.
        let delegation = crate::authn::chain::decode(&subject_claims, usize::MAX)
            .map_err(|e| ExchangeError::token("subject_token", &e))?;
        record.depth = delegation.depth() + 1;
        match &delegation.may_act {
            Some(may_act) if !may_act.permits(&actor.subject, Some(&actor.issuer)) => {
                return Err(ExchangeError::invalid_grant(
                    "the subject_token's may_act does not name this actor",
                ));
            }
            None if self.require_may_act => {
                return Err(ExchangeError::invalid_grant(
                    "the subject_token has no may_act claim, and exchange.require_may_act is set",
                ));
            }
            _ => {}
        }
        if delegation.depth() + 1 > self.max_depth {
            return Err(ExchangeError::invalid_request(format!(
                "the delegation would be {} actors deep; authn.max_delegation_depth is {}",
                delegation.depth() + 1,
                self.max_depth
            )));
        }

        let Some(snapshot) = state.policy.clone() else {
            return Err(ExchangeError::new(
                ExchangeResult::TemporarilyUnavailable,
                "no policy is loaded yet",
            ));
        };
        record.revision = Some(snapshot.policies.revision().clone());
        let actor_party = Party {
            id: actor.subject.clone(),
            claims: without_act(&actor_claims),
        };
        let input = json!({
            "subject": party(&delegation.subject),
            "actor": party(&actor_party),
            "chain": delegation.chain.iter().map(party).collect::<Vec<_>>(),
            "scope": req.scope,
            "audience": req.audience,
            "resource": req.resource,
            "requested_token_type": req.requested_token_type,
        });
        let (query, limit) = (self.query.clone(), self.eval_timeout);
        let result = tokio::task::spawn_blocking(move || {
            snapshot
                .policies
                .evaluate_query(&query, regorus::Value::from(input), limit)
        })
        .instrument(traces::phase("evaluate"))
        .await
        .map_err(|e| ExchangeError::new(ExchangeResult::ServerError, e.to_string()))?
        .map_err(|e| self.policy_failed(&e))?;
        let verdict = self.verdict(result)?;

        let scope = granted(&req.scope, &verdict.scopes).map_err(|missing| {
            ExchangeError::new(
                ExchangeResult::InvalidScope,
                format!("the policy does not allow the scope {missing:?}"),
            )
        })?;
        let targets: Vec<String> = req.audience.iter().chain(&req.resource).cloned().collect();
        let audience = granted(&targets, &verdict.audience).map_err(|missing| {
            ExchangeError::new(
                ExchangeResult::InvalidTarget,
                format!("the policy does not allow the audience {missing:?}"),
            )
        })?;
        if audience.is_empty() {
            return Err(ExchangeError::new(
                ExchangeResult::InvalidTarget,
                "no audience: name one (audience or resource), or let the policy's result name it",
            ));
        }
        record.issued_scope = scope.clone();
        record.issued_audience = audience.clone();

        let now = unix_now();
        let ttl = verdict.ttl.unwrap_or(self.max_ttl).min(self.max_ttl);
        let mut exp = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        for limit in [subject.expires_at, actor.expires_at].into_iter().flatten() {
            exp = exp.min(limit);
        }
        if exp <= now {
            return Err(match ttl < Duration::from_secs(1) {
                true => self.malformed("has a `ttl` under one second"),
                false => ExchangeError::invalid_grant(
                    "an input token expires before an issued token could live a second",
                ),
            });
        }
        let jti = random_id();
        let claims = self.claims(Claims {
            subject: &subject_claims,
            actor: &actor_claims,
            verdict: &verdict,
            audience: &audience,
            scope: &scope,
            now,
            exp,
            jti: &jti,
        });
        let token = traces::phase("sign")
            .in_scope(|| self.keys.current().sign_jwt(&claims))
            .map_err(|e| ExchangeError::new(ExchangeResult::ServerError, e.to_string()))?;
        record.jti = Some(jti);
        Ok(Issued {
            access_token: token,
            issued_token_type: req.requested_token_type,
            expires_in: exp - now,
            scope,
        })
    }

    /// The issued token's claims.
    fn claims(&self, c: Claims<'_>) -> Map<String, Json> {
        let mut out = Map::new();
        out.insert("iss".into(), Json::from(&*self.issuer));
        out.insert(
            "sub".into(),
            c.subject.get("sub").cloned().unwrap_or(Json::Null),
        );
        // The subject's claims the policy chose to carry over.
        copy(&mut out, c.subject, &c.verdict.subject_claims);
        out.insert(
            "aud".into(),
            match c.audience {
                [one] => Json::from(one.as_str()),
                many => Json::from(many.to_vec()),
            },
        );
        if !c.scope.is_empty() {
            out.insert("scope".into(), Json::from(c.scope.join(" ")));
        }
        out.insert("iat".into(), Json::from(c.now));
        out.insert("exp".into(), Json::from(c.exp));
        out.insert("jti".into(), Json::from(c.jti));
        let actor_sub = c.actor.get("sub").cloned().unwrap_or(Json::Null);
        out.insert("client_id".into(), actor_sub.clone());
        // The new actor first; the subject token's own chain, exactly as signed, below it.
        let mut act = Map::new();
        act.insert("sub".into(), actor_sub);
        // Whose `sub` it is: a may_act naming an issuer can match it, and actors of two
        // issuers are never confused.
        if let Some(iss) = c.actor.get("iss") {
            act.insert("iss".into(), iss.clone());
        }
        copy(&mut act, c.actor, &c.verdict.act_claims);
        if let Some(previous) = c.subject.get("act") {
            act.insert("act".into(), previous.clone());
        }
        out.insert("act".into(), Json::Object(act));
        out
    }

    /// An undefined or malformed policy result: logged, and refused.
    fn malformed(&self, why: &str) -> ExchangeError {
        tracing::warn!(
            exchange.policy_query = &*self.query,
            detail = why,
            "The exchange policy's result is undefined or malformed; refusing"
        );
        ExchangeError::invalid_request(format!("the exchange policy's result {why}"))
    }

    /// The policy's result, or the refusal it asks for.
    fn verdict(&self, result: regorus::Value) -> Result<Verdict, ExchangeError> {
        let malformed = |why: &str| self.malformed(why);
        let json = match result {
            regorus::Value::Undefined => return Err(malformed("is undefined")),
            v => serde_json::to_value(&v).map_err(|_| malformed("is not JSON"))?,
        };
        let Json::Object(r) = json else {
            return Err(malformed("is not an object"));
        };
        let allow = match r.get("allow") {
            Some(Json::Bool(b)) => *b,
            None => false,
            Some(_) => return Err(malformed("has an `allow` that is not a boolean")),
        };
        if !allow {
            let code = match r.get("error").and_then(Json::as_str) {
                None => ExchangeResult::UnauthorizedClient,
                Some(code) => ExchangeResult::ALL
                    .into_iter()
                    .filter(|c| {
                        matches!(
                            c,
                            ExchangeResult::InvalidRequest
                                | ExchangeResult::InvalidGrant
                                | ExchangeResult::InvalidTarget
                                | ExchangeResult::InvalidScope
                                | ExchangeResult::UnauthorizedClient
                        )
                    })
                    .find(|c| c.label() == code)
                    .ok_or_else(|| malformed("names an `error` that is not an OAuth error code"))?,
            };
            let description = r
                .get("error_description")
                .and_then(Json::as_str)
                .unwrap_or("the exchange policy refused this delegation");
            return Err(ExchangeError::new(code, description));
        }
        let strings = |key: &str| -> Result<Vec<String>, ExchangeError> {
            match r.get(key) {
                None => Ok(Vec::new()),
                Some(Json::String(s)) if key == "audience" => Ok(vec![s.clone()]),
                Some(Json::Array(list)) => list
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| malformed(&format!("has a `{key}` that is not all strings"))),
                Some(_) => Err(malformed(&format!("has a `{key}` of the wrong type"))),
            }
        };
        let ttl = match r.get("ttl") {
            None => None,
            Some(Json::String(s)) => Some(
                s.parse::<Interval>()
                    .map_err(|_| malformed("has a `ttl` that is not a duration such as 15m"))?
                    .0,
            ),
            Some(_) => return Err(malformed("has a `ttl` that is not a string")),
        };
        Ok(Verdict {
            scopes: strings("scopes")?,
            audience: strings("audience")?,
            ttl,
            act_claims: strings("act_claims")?,
            subject_claims: strings("subject_claims")?,
        })
    }

    fn policy_failed(&self, e: &PolicyError) -> ExchangeError {
        tracing::warn!(
            error = %e,
            exchange.policy_query = &*self.query,
            "The exchange policy failed; refusing"
        );
        ExchangeError::new(
            ExchangeResult::ServerError,
            "the exchange policy could not be evaluated",
        )
    }
}

struct Claims<'a> {
    subject: &'a Map<String, Json>,
    actor: &'a Map<String, Json>,
    verdict: &'a Verdict,
    audience: &'a [String],
    scope: &'a [String],
    now: i64,
    exp: i64,
    jti: &'a str,
}

/// What to issue of `requested`, given what the policy `allowed`: everything requested when
/// all of it is allowed (the first item that is not, as the error), or all the policy allows
/// when nothing was requested.
fn granted(requested: &[String], allowed: &[String]) -> Result<Vec<String>, String> {
    if requested.is_empty() {
        let mut out = allowed.to_vec();
        out.dedup();
        return Ok(out);
    }
    let mut out: Vec<String> = Vec::with_capacity(requested.len());
    for r in requested {
        if !allowed.contains(r) {
            return Err(r.clone());
        }
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    Ok(out)
}

/// Copies the named claims of `from` into `to`, except the reserved ones.
fn copy(to: &mut Map<String, Json>, from: &Map<String, Json>, names: &[String]) {
    for name in names {
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        if let Some(v) = from.get(name) {
            to.insert(name.clone(), v.clone());
        }
    }
}

fn claims(auth: &Authenticated) -> Result<Map<String, Json>, ExchangeError> {
    serde_json::from_str(auth.claims_json()).map_err(|_| {
        ExchangeError::new(
            ExchangeResult::ServerError,
            "the verified claims cannot be read again",
        )
    })
}

fn without_act(claims: &Map<String, Json>) -> Map<String, Json> {
    claims
        .iter()
        .filter(|(k, _)| k.as_str() != "act")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn party(p: &Party) -> Json {
    json!({"id": &*p.id, "claims": p.claims})
}

#[cfg(test)]
mod tests;
