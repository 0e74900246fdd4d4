//! Verified claims -> the delegation chain (RFC 8693 §4.1 `act`).
//!
//! `{"sub":"alice","act":{"sub":"agent-a","act":{"sub":"orchestrator"}}}` means agent-a acts
//! for alice now, having been delegated to by the orchestrator earlier. The outermost `act` is
//! the current actor; nested ones are earlier actors. The walk is a loop with a depth limit,
//! never recursion on attacker-shaped data.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::AuthnError;
use crate::identity::{Delegation, MayAct, Party, TokenInfo};

/// Decodes subject and actors from verified claims. A token whose `may_act` names another
/// party than its current actor is refused: the subject did not allow that actor.
pub fn decode(claims: &Map<String, Value>, max_depth: usize) -> Result<Delegation, AuthnError> {
    let subject = party(claims).ok_or(AuthnError::MissingClaim("sub"))?;
    let mut chain = Vec::new();
    let mut next = claims.get("act");
    while let Some(act) = next {
        if chain.len() == max_depth {
            return Err(AuthnError::ChainTooDeep(max_depth));
        }
        let act = act.as_object().ok_or(AuthnError::InvalidActor)?;
        chain.push(party(act).ok_or(AuthnError::InvalidActor)?);
        next = act.get("act");
    }
    let may_act = claims.get("may_act").map(may_act).transpose()?;
    if let (Some(allowed), Some(actor)) = (&may_act, chain.first())
        && !allowed.permits(&actor.id, actor.claims.get("iss").and_then(Value::as_str))
    {
        return Err(AuthnError::ActorNotPermitted);
    }
    Ok(Delegation {
        subject,
        chain,
        may_act,
    })
}

/// Reads a `may_act` claim: an object naming one party by `sub`, and optionally `iss`.
pub fn may_act(value: &Value) -> Result<MayAct, AuthnError> {
    let claims = value.as_object().ok_or(AuthnError::InvalidMayAct)?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(AuthnError::InvalidMayAct)?;
    let iss = match claims.get("iss") {
        None => None,
        Some(Value::String(iss)) => Some(iss.clone()),
        Some(_) => return Err(AuthnError::InvalidMayAct),
    };
    Ok(MayAct {
        sub: sub.to_string(),
        iss,
        claims: claims.clone(),
    })
}

fn party(claims: &Map<String, Value>) -> Option<Party> {
    // An id is text: control characters (CR, LF, NUL...) could split a header or a log line
    // wherever an id is written, so a token carrying one names nobody.
    let id = claims
        .get("sub")?
        .as_str()
        .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))?;
    let claims = claims
        .iter()
        .filter(|(k, _)| k.as_str() != "act")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(Party {
        id: Arc::from(id),
        claims,
    })
}

// === impl TokenInfo ===

impl TokenInfo {
    pub fn from_claims(
        claims: &Map<String, Value>,
        kind: Option<String>,
    ) -> Result<Self, AuthnError> {
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AuthnError::MissingClaim("iss"))?
            .to_string();
        // A string or an array of strings (RFC 7519 §4.1.3); anything else is not an audience.
        let audience = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(AuthnError::InvalidClaim("aud"))?,
            Some(_) => return Err(AuthnError::InvalidClaim("aud")),
            None => return Err(AuthnError::MissingClaim("aud")),
        };
        // OAuth `scope` is space-separated (RFC 8693 §4.2); some IdPs send an `scp` array.
        let scopes = match (claims.get("scope"), claims.get("scp")) {
            (Some(Value::String(s)), _) => s.split_whitespace().map(str::to_string).collect(),
            (_, Some(Value::Array(list))) => list
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            (_, Some(Value::String(s))) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        Ok(TokenInfo {
            issuer,
            audience,
            scopes,
            expires_at: claims.get("exp").and_then(numeric_date),
            jti: claims
                .get("jti")
                .and_then(Value::as_str)
                .map(str::to_string),
            kind,
        })
    }
}

/// A NumericDate (RFC 7519 §2) as whole seconds, rounded as jsonwebtoken reads it when it
/// checks `exp`: an issuer may write `1800000000.5`, and a float must bound caches and
/// issued tokens as surely as an integer.
fn numeric_date(value: &Value) -> Option<i64> {
    match value.as_i64() {
        Some(n) => Some(n),
        None => value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < i64::MAX as f64)
            .map(|f| f.round() as i64),
    }
}
