//! Issuer keys: JWKS from a file, a `jwks_uri` or OIDC discovery, turned once per fetch into
//! verification keys parsed for each algorithm they may verify (aws-lc's `ParsedPublicKey`:
//! the RSA or EC key is built once per key set, never per token).
//!
//! The current key set of an issuer sits behind an `ArcSwap`: a request reads it without a
//! lock. A background task fetches again every `jwks_ttl`; a token naming an unknown `kid`
//! triggers a fetch at most once per `min_refresh_interval`. A failing fetch keeps the last
//! good set (stale-on-error), so an IdP outage does not stop verification with known keys.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use tokio::sync::Mutex;

use super::AuthnError;
use super::TokenCache;
use crate::cache::Digest;
use crate::config::IssuerConfig;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("{origin} is not a JWKS document: {message}")]
    Document { origin: String, message: String },
    #[error("{origin} holds no key usable with the allowed algorithms")]
    NoUsableKey { origin: String },
    #[error("discovery document at {url} names issuer `{found}`, expected `{expected}`")]
    DiscoveryIssuer {
        url: String,
        found: String,
        expected: String,
    },
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(std::path::PathBuf),
    Uri(String),
    /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery(String),
}

/// One verification key, parsed once for each algorithm it may verify.
pub struct VerifyKey {
    kid: Option<Arc<str>>,
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
    /// SHA-256 of the key material: tells a re-published key from a replaced one.
    fingerprint: Digest,
}

/// The usable keys of one issuer at one point in time.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    without_kid: Vec<Arc<VerifyKey>>,
}

/// One issuer's key fetches, read when `/metrics` is scraped.
#[derive(Debug, Clone)]
pub struct IssuerCounts {
    pub issuer: String,
    pub fetched: u64,
    pub failed: u64,
    /// Since the keys in use were fetched; `None` before the first success.
    pub age: Option<Duration>,
}

/// One trusted issuer: settings, current keys, and how to refresh them.
pub struct IssuerKeys {
    issuer: Arc<str>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    /// Longest a token of this issuer may still have to live (`exp - now`), when set.
    max_token_lifetime: Option<Duration>,
    source: KeySource,
    ttl: Duration,
    min_refresh_interval: Duration,
    current: ArcSwap<KeySet>,
    loaded: AtomicBool,
    /// Time of the last fetch attempt; held while fetching, so fetches never overlap.
    last_fetch: Mutex<Option<Instant>>,
    client: reqwest::Client,
    /// Tokens verified with keys of this issuer; emptied of a key's tokens when it goes away.
    token_cache: Option<Arc<TokenCache>>,
    /// Told of every new key set (`state::StateCell`).
    on_change: std::sync::OnceLock<KeysHook>,
    /// Longest a request waits for a fetch its unknown `kid` started.
    unknown_kid_wait: Duration,
    /// A fetch for an unknown `kid` is running; `fetched` wakes its waiters when it ends.
    fetching: AtomicBool,
    fetched: tokio::sync::Notify,
    /// Fetches that succeeded and failed, and when the keys in use were fetched (`/metrics`).
    fetches_ok: AtomicU64,
    fetches_failed: AtomicU64,
    loaded_at: std::sync::Mutex<Option<Instant>>,
}

/// `authn.unknown_kid_wait`'s default: well under Envoy's default ext_authz timeout (200 ms).
pub const DEFAULT_UNKNOWN_KID_WAIT: Duration = Duration::from_millis(100);

/// Called with the issuer's name and its new key set, as it is swapped in.
pub type KeysHook = Box<dyn Fn(&Arc<str>, Arc<KeySet>) + Send + Sync>;

// === impl VerifyKey ===

impl VerifyKey {
    /// Whether this key may verify `alg` (from its `kty`, `crv`, `alg` and the issuer's list).
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.parsed.iter().any(|(a, _)| *a == alg)
    }

    /// Checks `signature` over `message` (the token's `header.payload`) with algorithm `alg`.
    pub fn verify_signature(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key id, shared (cached tokens point to it rather than copy it).
    pub fn kid_name(&self) -> Option<&Arc<str>> {
        self.kid.as_ref()
    }

    pub fn fingerprint(&self) -> &Digest {
        &self.fingerprint
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field(
                "algorithms",
                &self.parsed.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

// === impl KeySet ===

impl KeySet {
    /// Builds the usable keys of a JWKS document. Keys that are not for signatures, of a kind
    /// that cannot verify the issuer's allowed algorithms, or malformed are skipped; symmetric
    /// (`oct`) keys are always skipped.
    pub fn from_jwks(doc: &[u8], issuer: &IssuerKeys, origin: &str) -> Result<KeySet, JwksError> {
        let doc_err = |message: String| JwksError::Document {
            origin: origin.to_string(),
            message,
        };
        let value: serde_json::Value =
            serde_json::from_slice(doc).map_err(|e| doc_err(e.to_string()))?;
        let keys = value
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| doc_err("no `keys` array".into()))?;
        let mut set = KeySet::default();
        for raw in keys {
            let jwk: Jwk = match serde_json::from_value(raw.clone()) {
                Ok(jwk) => jwk,
                Err(e) => {
                    tracing::warn!(jwks.origin = origin, error = %e, "Skipping unreadable JWK");
                    continue;
                }
            };
            match issuer.verify_key(&jwk) {
                Some(key) => {
                    let key = Arc::new(key);
                    match key.kid.clone() {
                        Some(kid) => {
                            set.by_kid.insert(kid.to_string(), key);
                        }
                        None => set.without_kid.push(key),
                    }
                }
                None => tracing::debug!(
                    jwks.origin = origin,
                    jwk.kid = jwk.common.key_id.as_deref().unwrap_or(""),
                    "Skipping JWK not usable with the allowed algorithms"
                ),
            }
        }
        if set.is_empty() {
            return Err(JwksError::NoUsableKey {
                origin: origin.to_string(),
            });
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.without_kid.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.by_kid.keys().map(String::as_str)
    }

    /// Whether the key that verified a cached token (`kid`, `fingerprint`) is still here.
    pub fn has_key(&self, kid: Option<&str>, fingerprint: &Digest) -> bool {
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .is_some_and(|k| k.fingerprint == *fingerprint),
            None => self
                .by_kid
                .values()
                .chain(self.without_kid.iter())
                .any(|k| k.fingerprint == *fingerprint),
        }
    }

    /// Key ids of `self` that `next` no longer holds with the same key material.
    fn removed_in(&self, next: &KeySet) -> Vec<String> {
        self.by_kid
            .iter()
            .filter(|(kid, k)| !next.has_key(Some(kid), &k.fingerprint))
            .map(|(kid, _)| kid.clone())
            .collect()
    }

    /// The key for a token header. A token with a `kid` must match that key exactly; a token
    /// without one is accepted only when exactly one key can verify its algorithm.
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).filter(|k| k.allows(alg)).cloned(),
            None => {
                let mut fits = self
                    .by_kid
                    .values()
                    .chain(self.without_kid.iter())
                    .filter(|k| k.allows(alg));
                match (fits.next(), fits.next()) {
                    (Some(only), None) => Some(only.clone()),
                    _ => None,
                }
            }
        }
    }
}

// === impl IssuerKeys ===

impl IssuerKeys {
    pub fn new(
        config: &IssuerConfig,
        token_cache: Option<Arc<TokenCache>>,
    ) -> Result<IssuerKeys, reqwest::Error> {
        let source = match (&config.jwks_file, &config.jwks_uri) {
            (Some(path), _) => KeySource::File(path.clone()),
            (None, Some(uri)) => KeySource::Uri(uri.clone()),
            (None, None) => KeySource::Discovery(config.issuer.clone()),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(config.fetch_timeout.0)
            .timeout(config.fetch_timeout.0)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("onbehalf/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(IssuerKeys {
            issuer: config.issuer.as_str().into(),
            audiences: config.audiences.clone(),
            algorithms: config
                .algorithms
                .iter()
                .filter_map(|a| crate::jose::parse_algorithm(a))
                .collect(),
            leeway: config.leeway.0,
            max_token_lifetime: config.max_token_lifetime.map(|i| i.0),
            source,
            ttl: config.jwks_ttl.0,
            min_refresh_interval: config.min_refresh_interval.0,
            current: ArcSwap::from_pointee(KeySet::default()),
            loaded: AtomicBool::new(false),
            last_fetch: Mutex::new(None),
            client,
            token_cache,
            on_change: std::sync::OnceLock::new(),
            unknown_kid_wait: DEFAULT_UNKNOWN_KID_WAIT,
            fetching: AtomicBool::new(false),
            fetched: tokio::sync::Notify::new(),
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            loaded_at: std::sync::Mutex::new(None),
        })
    }

    /// Sets how long a request waits for the fetch its unknown `kid` started
    /// (`authn.unknown_kid_wait`).
    pub fn with_unknown_kid_wait(mut self, wait: Duration) -> IssuerKeys {
        self.unknown_kid_wait = wait;
        self
    }

    /// Sets the one hook told of every new key set from now on; a second call changes nothing.
    pub fn on_change(&self, hook: KeysHook) {
        let _ = self.on_change.set(hook);
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The issuer, shared (verified tokens point to it rather than copy it).
    pub fn issuer_name(&self) -> &Arc<str> {
        &self.issuer
    }

    /// Allowed clock skew for `exp`, `nbf` and `iat`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    pub fn max_token_lifetime(&self) -> Option<Duration> {
        self.max_token_lifetime
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Fetches by result and the age of the keys in use, for `/metrics`.
    pub fn counts(&self) -> IssuerCounts {
        let loaded_at = *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner());
        IssuerCounts {
            issuer: self.issuer.to_string(),
            fetched: self.fetches_ok.load(Ordering::Relaxed),
            failed: self.fetches_failed.load(Ordering::Relaxed),
            age: loaded_at.map(|t| t.elapsed()),
        }
    }

    /// True once a key set has loaded at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// The audiences a token of this issuer must name one of.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The key that must verify a token with this header. `keys` is the caller's snapshot of
    /// this issuer's set. An unknown `kid` starts a fetch of the issuer's keys (rate limited;
    /// in the background) and waits for it at most `unknown_kid_wait`: an IdP that hangs never
    /// holds a request past that — it is answered 401 while the fetch goes on, and the next
    /// token with that `kid` finds the key.
    pub async fn key_for(
        self: &Arc<Self>,
        keys: &KeySet,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, AuthnError> {
        if let Some(key) = keys.find(kid, alg) {
            return Ok(key);
        }
        if !self.loaded() {
            return Err(AuthnError::KeysUnavailable);
        }
        if kid.is_some() && !matches!(self.source, KeySource::File(_)) {
            let fetched = self.fetched.notified();
            tokio::pin!(fetched);
            fetched.as_mut().enable();
            // One fetch at a time: while one runs, wait for it rather than queue another.
            if !self.fetching.swap(true, Ordering::AcqRel) {
                let me = self.clone();
                tokio::spawn(async move {
                    me.refresh(false).await;
                    me.fetching.store(false, Ordering::Release);
                    me.fetched.notify_waiters();
                });
            }
            let _ = tokio::time::timeout(self.unknown_kid_wait, fetched).await;
            if let Some(key) = self.current.load().find(kid, alg) {
                return Ok(key);
            }
        }
        Err(AuthnError::UnknownKeyId)
    }

    /// Fetches the key set and swaps it in. Unless `force`, does nothing when the last attempt
    /// was less than `min_refresh_interval` ago. On failure the current keys stay.
    pub async fn refresh(&self, force: bool) -> bool {
        let mut last = self.last_fetch.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.min_refresh_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                tracing::info!(
                    jwks.issuer = %self.issuer,
                    jwks.keys = set.len(),
                    "Loaded issuer keys"
                );
                let set = Arc::new(set);
                let previous = self.current.swap(set.clone());
                if let Some(hook) = self.on_change.get() {
                    hook(&self.issuer, set);
                }
                self.loaded.store(true, Ordering::Release);
                let removed = previous.removed_in(&self.current.load());
                if let Some(cache) = &self.token_cache
                    && !removed.is_empty()
                {
                    tracing::info!(
                        jwks.issuer = %self.issuer,
                        jwks.removed = ?removed,
                        "Keys removed; dropping the tokens they verified"
                    );
                    cache.invalidate_keys(&self.issuer, removed);
                }
                true
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    jwks.issuer = %self.issuer,
                    error = %e,
                    jwks.stale = self.loaded(),
                    "Fetching issuer keys failed; keeping the keys already known"
                );
                false
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        match &self.source {
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|source| JwksError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
                KeySet::from_jwks(&bytes, self, &path.display().to_string())
            }
            KeySource::Uri(url) => {
                let bytes = self.get(url).await?;
                KeySet::from_jwks(&bytes, self, url)
            }
            KeySource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let bytes = self.get(&url).await?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| JwksError::Document {
                        origin: url.clone(),
                        message: e.to_string(),
                    })?;
                let found = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or("");
                if found != issuer {
                    return Err(JwksError::DiscoveryIssuer {
                        url,
                        found: found.to_string(),
                        expected: issuer.clone(),
                    });
                }
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| JwksError::Document {
                        origin: url.clone(),
                        message: "no `jwks_uri`".into(),
                    })?;
                let bytes = self.get(jwks_uri).await?;
                KeySet::from_jwks(&bytes, self, jwks_uri)
            }
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, JwksError> {
        let fail = |message: String| JwksError::Fetch {
            url: url.to_string(),
            message,
        };
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP status {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fail(format!(
                    "document is larger than {MAX_DOCUMENT_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Turns one JWK into a verification key, or `None` when it cannot verify any allowed
    /// algorithm. The algorithms come from the key (its `kty`, `crv` and `alg`), never from a
    /// token.
    fn verify_key(&self, jwk: &Jwk) -> Option<VerifyKey> {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return None;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 | EllipticCurve::P384 => AlgorithmFamily::Ec,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => AlgorithmFamily::Ed,
                _ => return None,
            },
            _ => return None,
        };
        let curve_alg = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                Some(Algorithm::ES384)
            }
            _ => None,
        };
        let declared = jwk.common.key_algorithm.and_then(key_algorithm);
        if jwk.common.key_algorithm.is_some() && declared.is_none() {
            return None;
        }
        let algorithms: Vec<Algorithm> = self
            .algorithms
            .iter()
            .copied()
            .filter(|a| family.algorithms().contains(a))
            .filter(|a| curve_alg.is_none_or(|c| c == *a))
            .filter(|a| declared.is_none_or(|d| d == *a))
            .collect();
        if algorithms.is_empty() {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let parsed = algorithms
            .iter()
            .map(|alg| Some((*alg, parse_key(&key, *alg)?)))
            .collect::<Option<Vec<_>>>()?;
        let material = serde_json::to_vec(&jwk.algorithm).ok()?;
        let mut fingerprint = [0u8; 32];
        for (o, b) in fingerprint
            .iter_mut()
            .zip(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &material).as_ref())
        {
            *o = *b;
        }
        Some(VerifyKey {
            kid: jwk.common.key_id.as_deref().map(Arc::from),
            parsed,
            fingerprint,
        })
    }
}

/// The key as aws-lc verifies `alg` with it; `None` when the material does not form one
/// (a malformed modulus, a point off the curve).
fn parse_key(key: &DecodingKey, alg: Algorithm) -> Option<ParsedPublicKey> {
    let rsa = |params: &'static sig::RsaParameters| match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents { n, e }
            .to_parsed_public_key(params)
            .ok(),
        DecodingKeyKind::SecretOrDer(_) => None,
    };
    let raw = |params: &'static dyn sig::VerificationAlgorithm| match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => ParsedPublicKey::new(params, bytes).ok(),
        DecodingKeyKind::RsaModulusExponent { .. } => None,
    };
    match alg {
        Algorithm::RS256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => raw(&sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => raw(&sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => raw(&sig::ED25519),
        _ => None, // HMAC: never from a JWKS
    }
}

impl fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("issuer", &self.issuer)
            .field("source", &self.source)
            .field("keys", &self.current.load().len())
            .finish_non_exhaustive()
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
