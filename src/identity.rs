//! Who a verified token names: the subject, the actors acting for it, and facts about the
//! token. Plain domain values, made by `authn` from verified claims and read by the input
//! document, minting and the pipeline; they know nothing of JWTs or Envoy.

use std::sync::Arc;

use serde_json::{Map, Value};

/// A party in a delegation: the subject or one actor.
#[derive(Debug, Clone, PartialEq)]
pub struct Party {
    pub id: Arc<str>,
    /// Every claim of this party except the nested `act`.
    pub claims: Map<String, Value>,
}

/// Who the request is for, and who is acting.
#[derive(Debug, Clone, PartialEq)]
pub struct Delegation {
    pub subject: Party,
    /// Current actor first, earliest actor last; empty when the user calls directly.
    pub chain: Vec<Party>,
    /// Who the subject allows to act for it (RFC 8693 §4.4 `may_act`), when the token says.
    pub may_act: Option<MayAct>,
}

/// A `may_act` claim: the one party allowed to act for the subject.
#[derive(Debug, Clone, PartialEq)]
pub struct MayAct {
    pub sub: String,
    /// When set, the actor must also come from this issuer.
    pub iss: Option<String>,
    /// The claim as the token carries it, for the policy.
    pub claims: Map<String, Value>,
}

/// Facts about the token itself, for `input.token`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub issuer: String,
    pub audience: Vec<String>,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    pub jti: Option<String>,
    /// The JOSE header's `typ`, e.g. `JWT` or `at+jwt`.
    pub kind: Option<String>,
}

// === impl Delegation ===

impl Delegation {
    /// The current actor, or `None` when the subject calls directly.
    pub fn actor(&self) -> Option<&Party> {
        self.chain.first()
    }

    pub fn depth(&self) -> usize {
        self.chain.len()
    }
}

// === impl MayAct ===

impl MayAct {
    /// Whether a party with `sub` from issuer `iss` (when known) is the one named.
    pub fn permits(&self, sub: &str, iss: Option<&str>) -> bool {
        self.sub == sub && self.iss.as_deref().is_none_or(|want| Some(want) == iss)
    }
}
