//! Token verification: bearer extraction, issuer lookup, signature and claim checks, and
//! the delegation chain. Only a token that passed every check becomes `Authenticated`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;

use crate::cache::{Digest, token_digest};
use crate::config::AuthnConfig;

pub mod chain;
pub mod jwks;
mod token_cache;

pub use crate::identity::{Delegation, MayAct, Party, TokenInfo};
pub use jwks::{IssuerCounts, IssuerKeys, KeySet};
pub use token_cache::{CachedToken, TokenCache};

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
    #[error("the token's {0} claim is malformed")]
    InvalidClaim(&'static str),
    #[error("the token names a JOSE extension onbehalf does not support (crit, b64)")]
    UnsupportedExtension,
    #[error("the token repeats a JSON member name")]
    DuplicateMember,
    #[error("the token's {0} claim is not a NumericDate between 0 and the year 9999")]
    InvalidDate(&'static str),
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token lives longer than its issuer's max_token_lifetime")]
    LifetimeTooLong,
    #[error("the token is not meant for this audience")]
    Audience,
    #[error("the token lacks a required claim: {0}")]
    MissingClaim(&'static str),
    #[error("the token's act claim is malformed")]
    InvalidActor,
    #[error("the token's may_act claim is malformed")]
    InvalidMayAct,
    #[error("the token's actor is not the party its may_act claim permits")]
    ActorNotPermitted,
    #[error("the token's delegation chain is deeper than {0}")]
    ChainTooDeep(usize),
    #[error("the issuer's keys are not available yet")]
    KeysUnavailable,
}

/// A token that verified, decoded into what every request needs. Kept compact: it lives in
/// the token cache (10,000 of them by default), so the claims are held once, as the JSON the
/// issuer signed, and what only the policy reads is rebuilt from it when needed.
#[derive(Debug)]
pub struct Authenticated {
    /// `sub` of the subject.
    pub subject: Arc<str>,
    /// `sub` of each actor, current first.
    pub chain: Box<[Arc<str>]>,
    /// The issuer (shared with its keys, not copied per token).
    pub issuer: Arc<str>,
    /// `exp`, seconds since the epoch: no cache entry made for this token outlives it.
    pub expires_at: Option<i64>,
    /// The JOSE header's `typ`.
    kind: Option<Box<str>>,
    /// The verified claims as the issuer signed them (JSON): the input document's
    /// token-derived parts are rebuilt from it when a cached token meets a new decision.
    claims: Box<str>,
    /// Digest of what the current policy reads of `parts`, by compiled policy set
    /// (`PolicySet::id`): the token-derived share of a decision-cache key, computed once per
    /// token and policy.
    key_part: arc_swap::ArcSwapOption<(u64, Digest)>,
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
        let json = serde_json::to_string(claims).map_err(|_| AuthnError::Malformed)?;
        let issuer = match claims.get("iss") {
            Some(serde_json::Value::String(iss)) => Arc::from(iss.as_str()),
            _ => return Err(AuthnError::MissingClaim("iss")),
        };
        Authenticated::decode(claims, json.into_boxed_str(), issuer, kind, max_depth)
            .map(|(auth, _)| auth)
    }

    /// Decodes verified claims (`json`, as signed, and its parse `claims`, whose `iss` is
    /// `issuer`) and builds the token's document parts from them while they are at hand.
    fn decode(
        claims: &serde_json::Map<String, serde_json::Value>,
        json: Box<str>,
        issuer: Arc<str>,
        kind: Option<String>,
        max_depth: usize,
    ) -> Result<(Authenticated, crate::input::TokenParts), AuthnError> {
        let delegation = chain::decode(claims, max_depth)?;
        let token = TokenInfo::from_claims(claims, kind)?;
        let parts = crate::input::TokenParts::build(&delegation, &token);
        let chain: Box<[Arc<str>]> = delegation.chain.iter().map(|p| p.id.clone()).collect();
        let auth = Authenticated {
            subject: delegation.subject.id,
            chain,
            issuer,
            expires_at: token.expires_at,
            kind: token.kind.map(String::into_boxed_str),
            claims: json,
            key_part: arc_swap::ArcSwapOption::empty(),
        };
        Ok((auth, parts))
    }

    /// The verified claims as the issuer signed them (JSON).
    pub fn claims_json(&self) -> &str {
        &self.claims
    }

    /// The verified claims, parsed again. They parsed when the token verified, so an error
    /// here means the cached text changed: the caller fails closed.
    fn claims(&self) -> Result<serde_json::Map<String, serde_json::Value>, AuthnError> {
        serde_json::from_str(&self.claims).map_err(|_| AuthnError::Malformed)
    }

    /// Facts about the token (`input.token`), decoded again from its claims.
    pub fn token_info(&self) -> Result<TokenInfo, AuthnError> {
        TokenInfo::from_claims(&self.claims()?, self.kind.as_deref().map(str::to_string))
    }

    /// The token-derived parts of the input document (`subject`, `actor`, `delegation`,
    /// `token`), rebuilt from the claims. Never a default in place of what the token says: a
    /// failure is an error (the request is denied, not judged as a user with no claims).
    pub fn parts(&self) -> Result<crate::input::TokenParts, AuthnError> {
        let claims = self.claims()?;
        // Within the depth limit when it verified; `usize::MAX` re-reads it as it was.
        let delegation = chain::decode(&claims, usize::MAX)?;
        let token = TokenInfo::from_claims(&claims, self.kind.as_deref().map(str::to_string))?;
        Ok(crate::input::TokenParts::build(&delegation, &token))
    }

    /// The identity header values: subject, current actor, and the whole chain (current
    /// actor first, comma-separated), each percent-encoded so that no id can forge a second
    /// chain element or header. Made per request rather than kept in the token cache: the
    /// response needs its own copies either way.
    pub fn identity(&self) -> [Option<String>; 3] {
        let mut chain = String::new();
        for id in &self.chain {
            if !chain.is_empty() {
                chain.push(',');
            }
            chain.extend(percent_encoding::utf8_percent_encode(id, HEADER_ESCAPE));
        }
        [
            Some(escape_header(&self.subject)),
            self.actor().map(|id| escape_header(id)),
            (!chain.is_empty()).then_some(chain),
        ]
    }

    /// The current actor's `sub`, or `None` when the subject calls directly.
    pub fn actor(&self) -> Option<&Arc<str>> {
        self.chain.first()
    }

    /// The token-derived share of a decision-cache key for the compiled policy `set`, when
    /// it was computed already (by `key::decision_key`).
    pub fn key_part(&self, set: u64) -> Option<Digest> {
        self.key_part
            .load()
            .as_ref()
            .filter(|cached| cached.0 == set)
            .map(|cached| cached.1)
    }

    pub fn set_key_part(&self, set: u64, digest: Digest) {
        self.key_part.store(Some(Arc::new((set, digest))));
    }
}

/// Each issuer's keys as of one moment: what a Check verifies its token against.
pub trait KeyView {
    fn keys(&self, issuer: &str) -> Option<&Arc<KeySet>>;
}

/// Each issuer's keys as they are now (for callers without a Check's snapshot: the token
/// exchange, `onbehalf check`).
struct Live<'a>(HashMap<&'a str, Arc<KeySet>>);

impl KeyView for Live<'_> {
    fn keys(&self, issuer: &str) -> Option<&Arc<KeySet>> {
        self.0.get(issuer)
    }
}

/// Verifies bearer tokens against the trusted issuers.
pub struct Verifier {
    issuers: HashMap<String, Arc<IssuerKeys>>,
    max_token_bytes: usize,
    max_depth: usize,
    cache: Option<Arc<TokenCache>>,
}

/// A token that verified.
#[derive(Debug)]
pub struct Verified {
    pub auth: Arc<Authenticated>,
    /// The token's document parts when it was verified just now (not from the cache): built
    /// from the claims while they were decoded, for the decision that follows.
    pub parts: Option<crate::input::TokenParts>,
    /// SHA-256 of the token, when the token cache computed it.
    pub digest: Option<Digest>,
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

/// Takes the token out of a header value of the form `Bearer <token>` (RFC 6750 §2.1).
///
/// `NotBearer` only when nothing in the value is a bearer credential: a value that tries one
/// and is not exactly `Bearer <token>` (`Bearer\t<token>`, a bare `Bearer`, or
/// `Basic x,Bearer y` from two headers Envoy joined) is `Malformed`, never taken for another
/// scheme (which `authn.required: false` would judge anonymous).
pub fn extract_bearer(value: Option<&str>) -> Result<&str, AuthnError> {
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    let value = value.ok_or(AuthnError::Missing)?;
    let not_bearer = || match value.split(',').any(|credential| {
        credential
            .split_ascii_whitespace()
            .next()
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer"))
    }) {
        true => AuthnError::Malformed,
        false => AuthnError::NotBearer,
    };
    let (scheme, token) = value.split_once(' ').ok_or_else(not_bearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(not_bearer());
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
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthnError> {
        let live = self
            .issuers
            .iter()
            .map(|(name, keys)| (name.as_str(), keys.current()))
            .collect();
        self.verify_with(&Live(live), token).await
    }

    /// `verify` against the keys of `view` (a Check's snapshot).
    pub async fn verify_with(
        &self,
        view: &impl KeyView,
        token: &str,
    ) -> Result<Verified, AuthnError> {
        // Size first: nothing below runs on an oversized token.
        if token.len() > self.max_token_bytes {
            return Err(AuthnError::TooLarge(self.max_token_bytes));
        }
        let Some(cache) = &self.cache else {
            return self
                .verify_uncached(view, token)
                .await
                .map(|(verified, _)| verified);
        };
        let digest = token_digest(token);
        if let Some(hit) = cache.get(&digest)
            && view
                .keys(&hit.auth.issuer)
                .is_some_and(|keys| keys.has_key(hit.kid.as_deref(), &hit.key_fingerprint))
        {
            cache.counted(true);
            return Ok(Verified {
                auth: hit.auth.clone(),
                parts: None,
                digest: Some(digest),
            });
        }
        cache.counted(false);
        let (mut verified, key) = self.verify_uncached(view, token).await?;
        cache.insert(
            digest,
            verified.auth.clone(),
            key.kid_name().cloned(),
            *key.fingerprint(),
        );
        verified.digest = Some(digest);
        Ok(verified)
    }

    /// The payload is decoded once: its unverified `iss` picks the issuer's keys, and after
    /// jsonwebtoken has checked signature and registered claims over these same bytes, the
    /// parse becomes the verified claims.
    async fn verify_uncached(
        &self,
        view: &impl KeyView,
        token: &str,
    ) -> Result<(Verified, Arc<jwks::VerifyKey>), AuthnError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Malformed)?;
        check_header(token)?;
        let (json, claims) = decode_payload(token)?;
        let issuer = match claims.get("iss") {
            Some(serde_json::Value::String(iss)) => iss.as_str(),
            Some(_) => return Err(AuthnError::Malformed),
            None => return Err(AuthnError::MissingClaim("iss")),
        };
        let keys = self
            .issuers
            .get(issuer)
            .ok_or(AuthnError::UntrustedIssuer)?;
        if !keys.allows(header.alg) {
            return Err(AuthnError::Algorithm);
        }
        let snapshot = view.keys(issuer).cloned().unwrap_or_else(|| keys.current());
        let key = keys
            .key_for(&snapshot, header.kid.as_deref(), header.alg)
            .await?;
        // The signature, with the key aws-lc parsed when the JWKS loaded; then the claims,
        // already parsed above.
        let (message, signature) = token.rsplit_once('.').ok_or(AuthnError::Malformed)?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthnError::Malformed)?;
        if !key.verify_signature(header.alg, message.as_bytes(), &signature) {
            return Err(AuthnError::Signature);
        }
        check_registered(&claims, keys)?;
        check_dates(&claims, keys)?;
        let (auth, parts) = Authenticated::decode(
            &claims,
            json,
            keys.issuer_name().clone(),
            header.typ,
            self.max_depth,
        )?;
        let verified = Verified {
            auth: Arc::new(auth),
            parts: Some(parts),
            digest: None,
        };
        Ok((verified, key))
    }
}

/// The registered claims, as jsonwebtoken's validation reads them: `exp`, `iss`, `aud` and
/// `sub` must be there (`exp` a non-negative number, the others strings, `aud` possibly a list
/// of them; anything else counts as missing); `exp` must not be past nor `nbf` ahead of now,
/// give or take the issuer's leeway; `aud` must name one of the issuer's audiences. (`iss`
/// has chosen the issuer already.)
fn check_registered(
    claims: &serde_json::Map<String, serde_json::Value>,
    keys: &IssuerKeys,
) -> Result<(), AuthnError> {
    use serde_json::Value;
    // A NumericDate as jsonwebtoken reads one: a non-negative number, rounded.
    let date = |v: &Value| {
        v.as_f64()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(f64::round)
    };
    let exp = claims
        .get("exp")
        .and_then(date)
        .ok_or(AuthnError::MissingClaim("exp"))?;
    if !matches!(claims.get("sub"), Some(Value::String(_))) {
        return Err(AuthnError::MissingClaim("sub"));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or(AuthnError::MissingClaim("aud"))?,
        _ => return Err(AuthnError::MissingClaim("aud")),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs() as f64);
    let leeway = keys.leeway().as_secs() as f64;
    if exp < now - leeway {
        return Err(AuthnError::Expired);
    }
    match claims.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => match date(v) {
            Some(nbf) if nbf > now + leeway => return Err(AuthnError::NotYetValid),
            Some(_) => {}
            None => return Err(AuthnError::Malformed),
        },
    }
    if !audiences
        .iter()
        .any(|a| keys.audiences().iter().any(|b| b == a))
    {
        return Err(AuthnError::Audience);
    }
    Ok(())
}

/// Latest NumericDate accepted: 9999-12-31T23:59:59Z. Anything later (2^63, 1e308) is not a
/// time but an attempt at a token that never expires.
const LAST_DATE: f64 = 253_402_300_799.0;

/// `exp`, `nbf` and `iat`, when present, must be JSON numbers from 0 to `LAST_DATE`
/// (jsonwebtoken has checked `exp` and `nbf` against the clock); `iat` may not be later than
/// now plus the leeway; and `exp` not further than the issuer's `max_token_lifetime`.
fn check_dates(
    claims: &serde_json::Map<String, serde_json::Value>,
    keys: &IssuerKeys,
) -> Result<(), AuthnError> {
    let date = |name: &'static str| -> Result<Option<f64>, AuthnError> {
        match claims.get(name) {
            None => Ok(None),
            Some(serde_json::Value::Number(n)) => n
                .as_f64()
                .filter(|d| (0.0..=LAST_DATE).contains(d))
                .map(Some)
                .ok_or(AuthnError::InvalidDate(name)),
            Some(_) => Err(AuthnError::InvalidDate(name)),
        }
    };
    let exp = date("exp")?;
    date("nbf")?;
    let iat = date("iat")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let leeway = keys.leeway().as_secs_f64();
    if iat.is_some_and(|iat| iat > now + leeway) {
        return Err(AuthnError::IssuedInFuture);
    }
    if let (Some(max), Some(exp)) = (keys.max_token_lifetime(), exp)
        && exp - now > max.as_secs_f64() + leeway
    {
        return Err(AuthnError::LifetimeTooLong);
    }
    Ok(())
}

/// The JWT's payload as JSON text and parsed (not verified yet).
fn decode_payload(
    token: &str,
) -> Result<(Box<str>, serde_json::Map<String, serde_json::Value>), AuthnError> {
    let mut segments = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(AuthnError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthnError::Malformed)?;
    let json = String::from_utf8(bytes).map_err(|_| AuthnError::Malformed)?;
    let claims = serde_json::from_str(&json).map_err(|_| AuthnError::Malformed)?;
    unique_members(&json)?;
    Ok((json.into_boxed_str(), claims))
}

/// The JOSE header, read strictly: no repeated member, and no extension onbehalf would have
/// to understand to verify correctly — `crit` (RFC 7515 §4.1.11: a verifier that does not
/// know a listed extension must refuse) and `b64` (RFC 7797, an unencoded payload).
fn check_header(token: &str) -> Result<(), AuthnError> {
    let segment = token.split('.').next().ok_or(AuthnError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthnError::Malformed)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| AuthnError::Malformed)?;
    unique_members(text)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| AuthnError::Malformed)?;
    if header.contains_key("crit") || header.contains_key("b64") {
        return Err(AuthnError::UnsupportedExtension);
    }
    Ok(())
}

/// Refuses JSON that repeats a member name in any object, at any depth: parsers disagree on
/// which one counts (serde_json keeps the last), so an issuer's signature over such a document
/// does not say which `sub` it vouched for.
fn unique_members(json: &str) -> Result<(), AuthnError> {
    use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

    struct Unique;
    struct Walk;

    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
            d.deserialize_any(Walk)
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = Unique;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if !seen.insert(key) {
                    return Err(A::Error::custom("duplicate member"));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }

    serde_json::from_str::<Unique>(json)
        .map(|_| ())
        .map_err(|_| AuthnError::DuplicateMember)
}

#[cfg(test)]
mod tests;
