//! Verified tokens by digest: a token is verified once, then answered from here until the
//! earlier of its `exp` and the TTL — and only while the key that verified it is still
//! published (a JWKS refresh that drops a key drops its tokens).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Authenticated;
use crate::cache::{DeadlineCache, Digest};
use crate::config::CacheSettings;

/// A token that verified, with what is needed to drop it when its key goes away. Held by
/// value (a read clones two `Arc`s), saving an allocation per entry.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub auth: Arc<Authenticated>,
    pub kid: Option<Arc<str>>,
    /// Digest of the verifying key's material: a `kid` reused for another key misses.
    pub key_fingerprint: Digest,
}

pub struct TokenCache {
    cache: DeadlineCache<CachedToken>,
    hits: AtomicU64,
    misses: AtomicU64,
}

// === impl TokenCache ===

impl TokenCache {
    pub fn new(settings: &CacheSettings) -> TokenCache {
        TokenCache {
            cache: DeadlineCache::new(settings, true),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &Digest) -> Option<CachedToken> {
        self.cache.get(key)
    }

    /// Counts a lookup: a hit only when the cached token was used (its key still published).
    pub fn counted(&self, hit: bool) {
        let counter = match hit {
            true => &self.hits,
            false => &self.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookups, evictions and entries, for `/metrics`.
    pub fn counts(&self) -> crate::cache::CacheCounts {
        crate::cache::CacheCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.cache.evictions(),
            entries: self.cache.entry_count(),
        }
    }

    /// Caches a verified token until the earlier of its `exp` and the TTL.
    pub fn insert(
        &self,
        key: Digest,
        auth: Arc<Authenticated>,
        kid: Option<Arc<str>>,
        key_fingerprint: Digest,
    ) {
        let exp = auth.expires_at;
        let entry = CachedToken {
            auth,
            kid,
            key_fingerprint,
        };
        self.cache.insert(key, entry, exp);
    }

    /// Drops every token verified by one of `kids` of `issuer` (keys removed from its JWKS).
    pub fn invalidate_keys(&self, issuer: &str, kids: Vec<String>) {
        let issuer: Arc<str> = issuer.into();
        self.cache.invalidate_if(move |v| {
            *v.auth.issuer == *issuer
                && v.kid
                    .as_ref()
                    .is_some_and(|k| kids.iter().any(|x| **x == **k))
        });
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's pending maintenance (tests and benchmarks read exact counts).
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}
