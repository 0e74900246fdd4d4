//! moka caches on the hot path: verified tokens and decisions.
//!
//! Keys are SHA-256 digests, so two different tokens or inputs never share an entry. Entries
//! never outlive the token they were made for: each carries a deadline, the earlier of the
//! configured TTL and the token's `exp`, checked on every read (an entry past it is dropped and
//! answered as a miss). moka bounds the entry count; no timer per entry is kept, which saves
//! memory on caches of 100,000 entries.
//!
//! The decision cache is sound by construction: its key covers the policy generation and every
//! part of the input document the compiled policy can read (`policy::analysis::reads`), so a
//! hit is exactly what a fresh evaluation would answer. A policy that calls a builtin whose
//! answer varies (time, randomness) is never cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use moka::sync::Cache;

use crate::authn::Authenticated;
use crate::config::CacheSettings;
use crate::decision::Decision;
use crate::input::{CheckInput, TokenParts, is_token_path};
use crate::policy::analysis::Segment;

pub type Digest = [u8; 32];

/// Hashes a [`Digest`] key by taking its first eight bytes. A SHA-256 output is already
/// uniform and cannot be steered by a client, so SipHash's protection against chosen keys
/// buys nothing here, and it showed in profiles of the cold path.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestState;

#[derive(Debug, Default)]
pub struct DigestHasher(u64);

impl std::hash::BuildHasher for DigestState {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    /// Mixes in the first eight bytes of each write: a digest key arrives as its length, then
    /// its 32 bytes.
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        for (w, b) in word.iter_mut().zip(bytes) {
            *w = *b;
        }
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }
}

/// A token that verified, with what is needed to drop it when its key goes away. Held by
/// value (a read clones two `Arc`s), saving an allocation per entry.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub auth: Arc<Authenticated>,
    pub kid: Option<Arc<str>>,
    /// Digest of the verifying key's material: a `kid` reused for another key misses.
    pub key_fingerprint: Digest,
    /// Milliseconds since the epoch after which the entry is not used.
    valid_until: u64,
}

/// A decision and when it stops being valid (milliseconds since the epoch). Kept small — a
/// decision cache holds up to 100,000 of these: the policy's raw result is not kept, the
/// decision is shared, and the deadline is checked on read rather than by a timer per entry.
#[derive(Debug, Clone)]
pub struct CachedDecision {
    pub decision: Arc<Decision>,
    valid_until: u64,
}

/// Verified tokens by digest.
pub struct TokenCache {
    cache: Cache<Digest, CachedToken, DigestState>,
    max_ttl: Duration,
}

/// Decisions by digest of (policy generation, what the policy reads).
pub struct DecisionCache {
    cache: Cache<Digest, CachedDecision, DigestState>,
    /// Decisions by digest of the policy result they came from: entries share one decision
    /// per distinct result, so 100,000 entries of a policy with a handful of answers hold a
    /// handful of decisions.
    interned: Cache<Digest, Arc<Decision>, DigestState>,
    max_ttl: Duration,
    generation: AtomicU64,
}

/// SHA-256 of a token.
pub fn token_digest(token: &str) -> Digest {
    to_array(digest::digest(&digest::SHA256, token.as_bytes()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The deadline of an entry made now for a token expiring at `exp` (seconds since the
/// epoch): the earlier of `exp` and `max` from now, in milliseconds since the epoch; `None`
/// when no time is left (or the token has no `exp`).
pub fn deadline(exp: Option<i64>, max: Duration) -> Option<u64> {
    let now = now_ms();
    let exp = u64::try_from(exp?).ok()?.saturating_mul(1000);
    let max = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Some(exp.min(now.saturating_add(max))).filter(|until| *until > now)
}

fn to_array(d: digest::Digest) -> Digest {
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(d.as_ref()) {
        *o = *b;
    }
    out
}

// === impl TokenCache ===

impl TokenCache {
    pub fn new(settings: &CacheSettings) -> TokenCache {
        TokenCache {
            cache: Cache::builder()
                .max_capacity(settings.max_entries)
                .support_invalidation_closures()
                .build_with_hasher(DigestState),
            max_ttl: settings.ttl.0,
        }
    }

    pub fn get(&self, key: &Digest) -> Option<CachedToken> {
        let entry = self.cache.get(key)?;
        if now_ms() >= entry.valid_until {
            self.cache.invalidate(key);
            return None;
        }
        Some(entry)
    }

    /// Caches a verified token until the earlier of its `exp` and the TTL.
    pub fn insert(
        &self,
        key: Digest,
        auth: Arc<Authenticated>,
        kid: Option<Arc<str>>,
        key_fingerprint: Digest,
    ) {
        let Some(valid_until) = deadline(auth.expires_at, self.max_ttl) else {
            return;
        };
        let entry = CachedToken {
            auth,
            kid,
            key_fingerprint,
            valid_until,
        };
        self.cache.insert(key, entry);
    }

    /// Drops every token verified by one of `kids` of `issuer` (keys removed from its JWKS).
    pub fn invalidate_keys(&self, issuer: &str, kids: Vec<String>) {
        let issuer: Arc<str> = issuer.into();
        let result = self.cache.invalidate_entries_if(move |_, v| {
            *v.auth.issuer == *issuer
                && v.kid
                    .as_ref()
                    .is_some_and(|k| kids.iter().any(|x| **x == **k))
        });
        if let Err(e) = result {
            // Only when closures are not enabled; they are. Fall back to dropping everything.
            tracing::warn!(error = %e, "Cannot invalidate selectively; clearing the token cache");
            self.cache.invalidate_all();
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's pending maintenance (tests and benchmarks read exact counts).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}

// === impl DecisionCache ===

impl DecisionCache {
    pub fn new(settings: &CacheSettings) -> DecisionCache {
        DecisionCache {
            cache: Cache::builder()
                .max_capacity(settings.max_entries)
                .build_with_hasher(DigestState),
            interned: Cache::builder()
                .max_capacity(4096)
                .time_to_live(settings.ttl.0)
                .build_with_hasher(DigestState),
            max_ttl: settings.ttl.0,
            generation: AtomicU64::new(0),
        }
    }

    /// The key: the policy generation, the token-derived share (`Authenticated::key_part`),
    /// and for each request-derived path the policy reads, the path and the value the
    /// document holds there (canonical JSON; `U` where undefined). Paths are written with
    /// their length so that no two different inputs write the same bytes.
    pub fn key(
        generation: u64,
        paths: &[Vec<Segment>],
        input: &CheckInput<'_>,
        auth: &Authenticated,
        parts: &mut Option<TokenParts>,
    ) -> Digest {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&generation.to_be_bytes());
        ctx.update(&auth.key_part(generation, paths, parts));
        let mut buf = Vec::with_capacity(256);
        for path in paths.iter().filter(|p| !is_token_path(p)) {
            buf.clear();
            write_path(path, &mut buf);
            input.feed_key(path, &mut buf);
            ctx.update(&(buf.len() as u64).to_be_bytes());
            ctx.update(&buf);
        }
        to_array(ctx.finish())
    }

    /// The cached decision for `key`, after dropping every entry of an older generation.
    pub fn get(&self, generation: u64, key: &Digest) -> Option<Arc<Decision>> {
        if self.generation.swap(generation, Ordering::AcqRel) != generation {
            // A new policy: old entries can never hit again (the generation is in the key);
            // free them now rather than at eviction.
            self.cache.invalidate_all();
            self.interned.invalidate_all();
        }
        let entry = self.cache.get(key)?;
        if now_ms() >= entry.valid_until {
            // Past the TTL or the token's `exp`: as good as absent.
            self.cache.invalidate(key);
            return None;
        }
        Some(entry.decision)
    }

    /// Caches `decision`, which the policy answered with `result`, until the earlier of the
    /// token's `exp` and the TTL.
    pub fn insert(
        &self,
        key: Digest,
        decision: Arc<Decision>,
        result: &regorus::Value,
        token_exp: Option<i64>,
    ) {
        let Some(valid_until) = deadline(token_exp, self.max_ttl) else {
            return;
        };
        // A decision is a function of the result: equal results share one decision.
        let decision = match serde_json::to_vec(result) {
            Ok(json) => {
                let digest = to_array(digest::digest(&digest::SHA256, &json));
                self.interned.get_with(digest, || decision)
            }
            Err(_) => decision,
        };
        self.cache.insert(
            key,
            CachedDecision {
                decision,
                valid_until,
            },
        );
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's pending maintenance (tests and benchmarks read exact counts).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}

/// The digest of what `parts` hold at the token-derived paths among `paths`.
pub fn token_part_digest(parts: &TokenParts, paths: &[Vec<Segment>]) -> Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = Vec::with_capacity(256);
    for path in paths {
        buf.clear();
        write_path(path, &mut buf);
        if parts.feed_key(path, &mut buf) {
            ctx.update(&(buf.len() as u64).to_be_bytes());
            ctx.update(&buf);
        }
    }
    to_array(ctx.finish())
}

fn write_path(path: &[Segment], buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(path.len() as u64).to_be_bytes());
    for seg in path {
        match seg {
            Segment::Key(k) => {
                buf.push(b'k');
                buf.extend_from_slice(&(k.len() as u64).to_be_bytes());
                buf.extend_from_slice(k.as_bytes());
            }
            Segment::Index(i) => {
                buf.push(b'i');
                buf.extend_from_slice(&i.to_be_bytes());
            }
        }
    }
    buf.push(b'=');
}

#[cfg(test)]
mod tests;
