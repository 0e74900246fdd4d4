//! Just-in-time, just-enough-access upstream tokens.
//!
//! On allow, the upstream receives a short-lived token onbehalf signs from the policy's
//! `grant` — one audience, the granted scopes, a minute — never the delegation token. The
//! subject and the whole `act` chain are copied from the verified delegation token, so the
//! upstream still sees who acts for whom.
//!
//! The signing keys form a [`KeyRing`]: the current key signs, and a key rotated out stays
//! published in the JWKS for `max_ttl`, so every token it signed verifies until it expires.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::{Map, Value as Json, json};

use crate::authn::Authenticated;
use crate::cache::{Digest, DigestState};
use crate::config::{MintConfig, MintFormat, WithoutGrant};
use crate::jose::{KeyError, PrivateKey, SignAlgorithm, b64};
use crate::policy::Grant;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The delegation token expires before a minted token could live one second.
    #[error("the delegation token expires too soon to mint an upstream token")]
    Expiring,
    #[error("the grant names no audience and mint.audience is not set")]
    NoAudience,
    #[error("the verified claims cannot be read again: {0}")]
    Claims(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Signs upstream tokens from grants.
pub struct Minter {
    issuer: Box<str>,
    audience: Box<[String]>,
    ttl: Duration,
    max_ttl: Duration,
    header: Box<str>,
    without_grant: WithoutGrant,
    format: MintFormat,
    keys: Arc<KeyRing>,
    reuse: Option<moka::sync::Cache<Digest, Arc<Minted>, DigestState>>,
}

/// What a request contributes to its minted token.
#[derive(Debug, Clone, Copy)]
pub struct MintRequest<'a> {
    pub auth: &'a Authenticated,
    pub grant: &'a Grant,
    /// The policy generation that granted it.
    pub generation: u64,
    /// Digest of the delegation token: the reuse key's first part.
    pub token_digest: Option<&'a Digest>,
    /// Envoy's `x-request-id`, else a new id is made.
    pub request_id: Option<&'a str>,
    pub method: &'a str,
    /// The request path without its query.
    pub path: &'a str,
    /// The client's address, for a Transaction Token's `rctx`.
    pub source: Option<&'a str>,
    /// The route's default audience (`onbehalf.mint_audience`): used when the grant names
    /// none, before `mint.audience`.
    pub route_audience: Option<&'a str>,
}

/// A minted token and its lifetime (seconds since the epoch).
#[derive(Debug)]
pub struct Minted {
    pub token: Box<str>,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// A token for one request: minted now, or reused from an identical decision.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub minted: Arc<Minted>,
    pub reused: bool,
}

/// Where a [`KeyRing`] gets its keys: `mint` and `exchange` each have one.
#[derive(Debug, Clone, Copy)]
pub struct KeySettings<'a> {
    /// The configuration section, for log lines (`mint`, `exchange`).
    pub section: &'static str,
    pub algorithm: &'a str,
    pub key_file: Option<&'a Path>,
    pub key_id: Option<&'a str>,
    /// How long a key rotated out stays published: the longest life of a token it signed.
    pub retire_after: Duration,
}

/// The signing keys: the current one and those rotated out but still published.
pub struct KeyRing {
    section: &'static str,
    algorithm: SignAlgorithm,
    key_id: Option<String>,
    key_file: Option<PathBuf>,
    /// How long a key rotated out stays published.
    retire_after: Duration,
    keys: ArcSwap<Keys>,
    /// Serialises rotations (the swap itself is lock-free for readers).
    rotating: Mutex<()>,
}

struct Keys {
    current: Arc<SigningKey>,
    retired: Vec<Retired>,
}

/// A key that signs, with its JWS headers encoded once.
pub struct SigningKey {
    key: PrivateKey,
    kid: Box<str>,
    thumbprint: String,
    /// base64url of `{"alg","kid","typ":"JWT"}` and of the Transaction Token header.
    header_jwt: String,
    header_txn: String,
}

struct Retired {
    jwk: Json,
    kid: Box<str>,
    until: SystemTime,
}

// === impl Minter ===

impl Minter {
    /// Builds the minter and its keys: from `mint.key_file`, or an ephemeral key.
    pub fn new(config: &MintConfig) -> Result<Minter, KeyError> {
        let keys = Arc::new(KeyRing::load(KeySettings {
            section: "mint",
            algorithm: &config.algorithm,
            key_file: config.key_file.as_deref(),
            key_id: config.key_id.as_deref(),
            retire_after: config.max_ttl.0,
        })?);
        let reuse = (config.reuse && config.format == MintFormat::Jwt).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.reuse_max_entries)
                // An entry is never used past half of a token's life; max_ttl bounds that.
                .time_to_live(config.max_ttl.0)
                .build_with_hasher(DigestState)
        });
        Ok(Minter {
            issuer: config.issuer.as_str().into(),
            audience: config.audience.clone().into_boxed_slice(),
            ttl: config.ttl.0,
            max_ttl: config.max_ttl.0,
            header: config.header().into(),
            without_grant: config.without_grant,
            format: config.format,
            keys,
            reuse,
        })
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The upstream header that carries minted tokens.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The header value for a minted token: `Bearer <jwt>` in `authorization`, else bare.
    pub fn header_value(&self, token: &str) -> String {
        match &*self.header {
            "authorization" => format!("Bearer {token}"),
            _ => token.to_string(),
        }
    }

    pub fn without_grant(&self) -> WithoutGrant {
        self.without_grant
    }

    pub fn format(&self) -> MintFormat {
        self.format
    }

    /// Whether minted tokens are reused (the reuse key needs the delegation token's digest).
    pub fn reuses(&self) -> bool {
        self.reuse.is_some()
    }

    /// Mints (or reuses) the upstream token for one allowed request.
    pub fn mint(&self, req: &MintRequest<'_>) -> Result<Upstream, MintError> {
        let now = unix_now();
        let route_audience;
        let audience: &[String] = match (req.grant.audience.is_empty(), req.route_audience) {
            (false, _) => &req.grant.audience,
            (true, Some(route)) => {
                route_audience = [route.to_string()];
                &route_audience
            }
            (true, None) => &self.audience,
        };
        if audience.is_empty() {
            return Err(MintError::NoAudience);
        }
        let lifetime = req.grant.ttl.unwrap_or(self.ttl).min(self.max_ttl);
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        let mut exp = now.saturating_add(lifetime);
        if let Some(token_exp) = req.auth.expires_at {
            exp = exp.min(token_exp);
        }
        if exp <= now {
            return Err(MintError::Expiring);
        }
        let signer = self.keys.current();

        let reuse_key = match (&self.reuse, req.token_digest) {
            (Some(_), Some(digest)) => {
                Some(reuse_key(digest, req, &signer.kid, audience, lifetime))
            }
            _ => None,
        };
        if let (Some(cache), Some(key)) = (&self.reuse, &reuse_key)
            && let Some(hit) = cache.get(key)
        {
            // Reused while at least half of its life remains, and never past the delegation
            // token's own `exp` (which bounds `exp` already).
            let half = (hit.expires_at - hit.issued_at) / 2;
            if now <= hit.expires_at - half {
                return Ok(Upstream {
                    minted: hit,
                    reused: true,
                });
            }
            cache.invalidate(key);
        }

        let claims = self.claims(req, audience, now, exp)?;
        let token = signer.sign(self.format, &claims)?;
        let minted = Arc::new(Minted {
            token: token.into_boxed_str(),
            issued_at: now,
            expires_at: exp,
        });
        if let (Some(cache), Some(key)) = (&self.reuse, reuse_key) {
            cache.insert(key, minted.clone());
        }
        Ok(Upstream {
            minted,
            reused: false,
        })
    }

    /// The claims of a minted token. `sub` and `act` are copied from the claims the
    /// delegation token's issuer signed, exactly (nested actors and their extra claims kept).
    fn claims(
        &self,
        req: &MintRequest<'_>,
        audience: &[String],
        now: i64,
        exp: i64,
    ) -> Result<Map<String, Json>, MintError> {
        let verified: Map<String, Json> = serde_json::from_str(req.auth.claims_json())
            .map_err(|e| MintError::Claims(e.to_string()))?;
        let mut claims = Map::new();
        claims.insert("iss".into(), Json::from(&*self.issuer));
        match verified.get("sub") {
            Some(sub @ Json::String(_)) => claims.insert("sub".into(), sub.clone()),
            _ => return Err(MintError::Claims("no `sub`".into())),
        };
        if let Some(act) = verified.get("act") {
            claims.insert("act".into(), act.clone());
        }
        claims.insert(
            "aud".into(),
            match audience {
                [one] => Json::from(one.as_str()),
                many => Json::from(many.to_vec()),
            },
        );
        claims.insert("scope".into(), Json::from(req.grant.scopes.join(" ")));
        claims.insert("iat".into(), Json::from(now));
        claims.insert("exp".into(), Json::from(exp));
        claims.insert("jti".into(), Json::from(crate::ids::random_id()));
        let txn = match req.request_id.filter(|id| !id.is_empty()) {
            Some(id) => id.to_string(),
            None => crate::ids::uuid_v4(),
        };
        claims.insert("txn".into(), Json::from(txn));
        if self.format == MintFormat::TxnToken {
            claims.insert(
                "tctx".into(),
                json!({"method": req.method, "path": req.path}),
            );
            let mut rctx = Map::new();
            if let Some(ip) = req.source {
                rctx.insert("req_ip".into(), Json::from(ip));
            }
            claims.insert("rctx".into(), Json::Object(rctx));
        }
        Ok(claims)
    }
}

/// Digest of everything a reused token must share with a fresh one: the delegation token,
/// the policy generation, the signing key, and the grant as it resolved.
fn reuse_key(
    token: &Digest,
    req: &MintRequest<'_>,
    kid: &str,
    audience: &[String],
    lifetime: i64,
) -> Digest {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(token);
    ctx.update(&req.generation.to_le_bytes());
    ctx.update(&lifetime.to_le_bytes());
    // Length-prefixed strings: no two lists of strings feed the same bytes.
    let mut feed = |s: &str| {
        ctx.update(&(s.len() as u64).to_le_bytes());
        ctx.update(s.as_bytes());
    };
    feed(kid);
    for a in audience {
        feed(a);
    }
    feed("\0scopes");
    for s in &req.grant.scopes {
        feed(s);
    }
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(ctx.finish().as_ref()) {
        *o = *b;
    }
    out
}

// === impl KeyRing ===

impl KeyRing {
    /// Loads the key from `key_file`, or makes an ephemeral one.
    pub fn load(settings: KeySettings<'_>) -> Result<KeyRing, KeyError> {
        let algorithm = SignAlgorithm::parse(settings.algorithm)
            .ok_or_else(|| KeyError::Algorithm(settings.algorithm.to_string()))?;
        let key = match settings.key_file {
            Some(path) => read_key(algorithm, path)?,
            None => {
                let key = PrivateKey::generate(algorithm)?;
                tracing::warn!(
                    key.section = settings.section,
                    key.algorithm = %algorithm,
                    "{}.key_file is not set: signing with an ephemeral key made at start; \
                     tokens signed with it stop verifying when this process ends",
                    settings.section
                );
                key
            }
        };
        let kid = settings
            .key_id
            .map_or_else(|| key.thumbprint(), str::to_string);
        Ok(KeyRing {
            section: settings.section,
            algorithm,
            key_id: settings.key_id.map(str::to_string),
            key_file: settings.key_file.map(Path::to_path_buf),
            retire_after: settings.retire_after,
            keys: ArcSwap::from_pointee(Keys {
                current: Arc::new(SigningKey::new(key, kid)),
                retired: Vec::new(),
            }),
            rotating: Mutex::new(()),
        })
    }

    /// The configuration section these keys belong to (`mint`, `exchange`).
    pub fn section(&self) -> &'static str {
        self.section
    }

    /// The key that signs now.
    pub fn current(&self) -> Arc<SigningKey> {
        self.keys.load().current.clone()
    }

    pub fn key_file(&self) -> Option<&Path> {
        self.key_file.as_deref()
    }

    /// Reads `mint.key_file` again; a new key signs from now on, and the previous one stays
    /// published for `max_ttl`. Returns whether the key changed. A file that does not hold a
    /// usable key changes nothing (the error is returned for the log).
    pub fn reload(&self) -> Result<bool, KeyError> {
        let Some(path) = &self.key_file else {
            return Ok(false);
        };
        let key = read_key(self.algorithm, path)?;
        Ok(self.rotate(key))
    }

    /// Makes `key` the signing key, unless it already is.
    pub fn rotate(&self, key: PrivateKey) -> bool {
        let _guard = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.keys.load_full();
        let thumbprint = key.thumbprint();
        if old.current.thumbprint == thumbprint {
            return false;
        }
        let now = SystemTime::now();
        let mut retired: Vec<Retired> = old
            .retired
            .iter()
            .filter(|r| r.until > now && *r.kid != *thumbprint)
            .map(|r| Retired {
                jwk: r.jwk.clone(),
                kid: r.kid.clone(),
                until: r.until,
            })
            .collect();
        retired.push(Retired {
            jwk: old.current.public_jwk(),
            kid: old.current.kid.clone(),
            until: now + self.retire_after,
        });
        // `key_id` names the key loaded at start; a key rotated in is named by its
        // thumbprint, so that the JWKS never holds two keys under one `kid`.
        let kid = match &self.key_id {
            Some(id) if retired.iter().all(|r| *r.kid != **id) => id.clone(),
            _ => thumbprint,
        };
        tracing::info!(
            key.section = self.section,
            key.kid = %kid,
            key.retired_kid = %old.current.kid,
            "Signing with a new key; the previous one stays published"
        );
        self.keys.store(Arc::new(Keys {
            current: Arc::new(SigningKey::new(key, kid)),
            retired,
        }));
        true
    }

    /// The published keys (current first) as a JWKS document: public members only.
    pub fn jwks(&self) -> Json {
        let keys = self.keys.load();
        let now = SystemTime::now();
        let mut list = vec![keys.current.public_jwk()];
        list.extend(
            keys.retired
                .iter()
                .filter(|r| r.until > now)
                .map(|r| r.jwk.clone()),
        );
        json!({ "keys": list })
    }

    /// Key ids published now, current first (for `/v1/status`).
    pub fn kids(&self) -> Vec<String> {
        let keys = self.keys.load();
        let now = SystemTime::now();
        std::iter::once(keys.current.kid.to_string())
            .chain(
                keys.retired
                    .iter()
                    .filter(|r| r.until > now)
                    .map(|r| r.kid.to_string()),
            )
            .collect()
    }
}

fn read_key(alg: SignAlgorithm, path: &Path) -> Result<PrivateKey, KeyError> {
    let pem = std::fs::read(path).map_err(|e| {
        KeyError::Rejected(alg.name(), format!("cannot read {}: {e}", path.display()))
    })?;
    PrivateKey::from_pem(alg, &pem)
}

// === impl SigningKey ===

impl SigningKey {
    fn new(key: PrivateKey, kid: String) -> SigningKey {
        let alg = key.algorithm().name();
        let header = |typ: &str| {
            b64(json!({"alg": alg, "kid": kid, "typ": typ})
                .to_string()
                .as_bytes())
        };
        SigningKey {
            header_jwt: header("JWT"),
            header_txn: header("txntoken+jwt"),
            thumbprint: key.thumbprint(),
            kid: kid.into_boxed_str(),
            key,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn public_jwk(&self) -> Json {
        self.key.public_jwk(&self.kid)
    }

    /// A compact JWS of `claims` with `typ: JWT`.
    pub fn sign_jwt(&self, claims: &Map<String, Json>) -> Result<String, KeyError> {
        self.sign(MintFormat::Jwt, claims)
    }

    /// A compact JWS of `claims`.
    fn sign(&self, format: MintFormat, claims: &Map<String, Json>) -> Result<String, KeyError> {
        let header = match format {
            MintFormat::Jwt => &self.header_jwt,
            MintFormat::TxnToken => &self.header_txn,
        };
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Sign)?;
        let mut token = String::with_capacity(header.len() + payload.len() * 4 / 3 + 128);
        token.push_str(header);
        token.push('.');
        token.push_str(&b64(&payload));
        let signature = self.key.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&b64(&signature));
        Ok(token)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("key", &self.key)
            .finish()
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
