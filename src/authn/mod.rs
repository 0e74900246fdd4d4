//! Token verification: bearer extraction, issuer lookup, signature and claim checks, and
//! the delegation chain. Only a token that passed every check becomes `Authenticated`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use crate::cache::{TokenCache, token_digest};
use crate::config::AuthnConfig;

pub mod chain;
pub mod jwks;

pub use chain::{Delegation, Party, TokenInfo};
pub use jwks::{IssuerKeys, KeySet};

/// Why a token was refused. Every variant is a 401; the text is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no bearer token in the request")]
    Missing,
    #[error("the authorization header is not a bearer token")]
    NotBearer,
    #[error("the token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's issuer is not trusted")]
    UntrustedIssuer,
    #[error("the token's algorithm is not allowed for its issuer")]
    Algorithm,
    #[error("no key of the issuer matches the token's key id")]
    UnknownKeyId,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this audience")]
    Audience,
    #[error("the token lacks a required claim: {0}")]
    MissingClaim(&'static str),
    #[error("the token's act claim is malformed")]
    InvalidActor,
    #[error("the token's delegation chain is deeper than {0}")]
    ChainTooDeep(usize),
    #[error("the issuer's keys are not available yet")]
    KeysUnavailable,
}

/// A token that verified, decoded into the parts the policy sees. Kept compact: it lives in
/// the token cache, so the claims are held once, as the policy's values.
#[derive(Debug)]
pub struct Authenticated {
    /// `sub` of the subject, then of each actor, current first.
    pub subject: Arc<str>,
    pub chain: Vec<Arc<str>>,
    /// The identity header values, escaped once: subject, actor, chain.
    pub identity: [Option<String>; 3],
    pub token: TokenInfo,
    /// The verified claims as compact JSON: the input document's token-derived parts are
    /// rebuilt from it when a decision is evaluated, so a cached token stays small.
    claims: Box<str>,
    /// Digest of what the current policy reads of `parts`, by policy generation: the
    /// token-derived share of a decision-cache key, computed once per token and policy.
    key_part: arc_swap::ArcSwapOption<(u64, crate::cache::Digest)>,
}

// === impl Authenticated ===

impl Authenticated {
    /// Decodes verified claims: the delegation chain (at most `max_depth` actors) and the
    /// token's facts.
    pub fn from_claims(
        claims: &serde_json::Map<String, serde_json::Value>,
        kind: Option<String>,
        max_depth: usize,
    ) -> Result<Authenticated, AuthnError> {
        let delegation = chain::decode(claims, max_depth)?;
        let token = TokenInfo::from_claims(claims, kind)?;
        let chain: Vec<Arc<str>> = delegation.chain.iter().map(|p| p.id.clone()).collect();
        let escaped_chain = chain
            .iter()
            .map(|id| escape_header(id))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Authenticated {
            identity: [
                Some(escape_header(&delegation.subject.id)),
                chain.first().map(|id| escape_header(id)),
                (!escaped_chain.is_empty()).then_some(escaped_chain),
            ],
            subject: delegation.subject.id,
            chain,
            token,
            claims: serde_json::to_string(claims)
                .unwrap_or_default()
                .into_boxed_str(),
            key_part: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// The token-derived parts of the input document (`subject`, `actor`, `delegation`,
    /// `token`).
    pub fn parts(&self) -> crate::input::TokenParts {
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&self.claims).unwrap_or_default();
        // The claims decoded once already, within the depth limit.
        let delegation = chain::decode(&claims, usize::MAX).unwrap_or_else(|_| Delegation {
            subject: Party {
                id: self.subject.clone(),
                claims: serde_json::Map::new(),
            },
            chain: Vec::new(),
        });
        crate::input::TokenParts::build(&delegation, &self.token)
    }

    /// The current actor's `sub`, or `None` when the subject calls directly.
    pub fn actor(&self) -> Option<&Arc<str>> {
        self.chain.first()
    }

    /// The token-derived share of a decision-cache key for policy `generation`, which reads
    /// `paths`. When it has to build the token's document parts, it leaves them in `parts`
    /// for the evaluation that follows a miss.
    pub fn key_part(
        &self,
        generation: u64,
        paths: &[Vec<crate::policy::analysis::Segment>],
        parts: &mut Option<crate::input::TokenParts>,
    ) -> crate::cache::Digest {
        if let Some(cached) = self.key_part.load().as_ref()
            && cached.0 == generation
        {
            return cached.1;
        }
        let built = parts.get_or_insert_with(|| self.parts());
        let digest = crate::cache::token_part_digest(built, paths);
        self.key_part.store(Some(Arc::new((generation, digest))));
        digest
    }
}

/// Verifies bearer tokens against the trusted issuers.
pub struct Verifier {
    issuers: HashMap<String, Arc<IssuerKeys>>,
    max_token_bytes: usize,
    max_depth: usize,
    cache: Option<Arc<TokenCache>>,
}

/// The unverified `iss`, read only to choose which issuer's keys to verify with.
#[derive(Deserialize)]
struct IssuerPeek {
    iss: Option<String>,
}

/// Characters percent-encoded in identity header values: controls, non-ASCII (always), and
/// the separators that would let an id forge a second chain element or header.
const HEADER_ESCAPE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b',')
    .add(b'%')
    .add(b'"');

fn escape_header(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, HEADER_ESCAPE).to_string()
}

/// Parses an algorithm name from configuration. HMAC and `none` are never accepted: keys come
/// from JWKS documents of public keys only.
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Takes the token out of a header value of the form `Bearer <token>` (RFC 6750 §2.1).
pub fn extract_bearer(value: Option<&str>) -> Result<&str, AuthnError> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    let value = value.ok_or(AuthnError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::NotBearer);
    }
    let token = token.trim_start();
    // Only the shape here: the JWT decoder refuses anything that is not base64url.
    if token.is_empty() || token.bytes().any(|b| b.is_ascii_whitespace() || b == b'"') {
        return Err(AuthnError::Malformed);
    }
    Ok(token)
}

// === impl Verifier ===

impl Verifier {
    pub fn new(
        config: &AuthnConfig,
        issuers: Vec<Arc<IssuerKeys>>,
        cache: Option<Arc<TokenCache>>,
    ) -> Verifier {
        Verifier {
            issuers: issuers
                .into_iter()
                .map(|i| (i.issuer().to_string(), i))
                .collect(),
            max_token_bytes: config.max_token_bytes,
            max_depth: config.max_delegation_depth,
            cache,
        }
    }

    pub fn token_cache(&self) -> Option<&Arc<TokenCache>> {
        self.cache.as_ref()
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<IssuerKeys>> {
        self.issuers.values()
    }

    /// True once every issuer's keys have loaded at least once.
    pub fn all_keys_loaded(&self) -> bool {
        self.issuers.values().all(|i| i.loaded())
    }

    /// Verifies signature, issuer, audience, times and algorithm, then decodes the chain. A
    /// token that verified before, whose key is still published, is answered from the cache.
    pub async fn verify(&self, token: &str) -> Result<Arc<Authenticated>, AuthnError> {
        // Size first: nothing below runs on an oversized token.
        if token.len() > self.max_token_bytes {
            return Err(AuthnError::TooLarge(self.max_token_bytes));
        }
        let Some(cache) = &self.cache else {
            return self.verify_uncached(token).await.map(|(auth, _)| auth);
        };
        let digest = token_digest(token);
        if let Some(hit) = cache.get(&digest)
            && self.issuers.get(&*hit.issuer).is_some_and(|i| {
                i.current()
                    .has_key(hit.kid.as_deref(), &hit.key_fingerprint)
            })
        {
            return Ok(hit.auth.clone());
        }
        let (auth, key) = self.verify_uncached(token).await?;
        cache.insert(
            digest,
            auth.clone(),
            auth.token.issuer.as_str().into(),
            key.kid().map(str::to_string),
            *key.fingerprint(),
        );
        Ok(auth)
    }

    async fn verify_uncached(
        &self,
        token: &str,
    ) -> Result<(Arc<Authenticated>, Arc<jwks::VerifyKey>), AuthnError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Malformed)?;
        let issuer = self.peek_issuer(token)?;
        let keys = self
            .issuers
            .get(&issuer)
            .ok_or(AuthnError::UntrustedIssuer)?;
        if !keys.allows(header.alg) {
            return Err(AuthnError::Algorithm);
        }
        let key = keys.key_for(header.kid.as_deref(), header.alg).await?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key.decoding_key(),
            key.validation(),
        )
        .map_err(map_jwt_error)?;
        let auth = Authenticated::from_claims(&data.claims, header.typ, self.max_depth)?;
        Ok((Arc::new(auth), key))
    }

    fn peek_issuer(&self, token: &str) -> Result<String, AuthnError> {
        let payload = token.split('.').nth(1).ok_or(AuthnError::Malformed)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| AuthnError::Malformed)?;
        let peek: IssuerPeek = serde_json::from_slice(&bytes).map_err(|_| AuthnError::Malformed)?;
        peek.iss.ok_or(AuthnError::MissingClaim("iss"))
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthnError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::InvalidAudience => AuthnError::Audience,
        ErrorKind::InvalidIssuer => AuthnError::UntrustedIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthnError::Algorithm,
        ErrorKind::MissingRequiredClaim(c) => AuthnError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "aud" => "aud",
            "iss" => "iss",
            "sub" => "sub",
            "nbf" => "nbf",
            _ => "a registered claim",
        }),
        ErrorKind::InvalidSignature => AuthnError::Signature,
        _ => AuthnError::Malformed,
    }
}

#[cfg(test)]
mod tests;
