//! Generic moka caches for the hot path: digest -> value, bounded in entries, each entry with
//! a deadline.
//!
//! Keys are SHA-256 digests, so two different tokens or inputs never share an entry. Entries
//! never outlive the token they were made for: each carries a deadline, the earlier of the
//! configured TTL and the token's `exp`, checked on every read (an entry past it is dropped and
//! answered as a miss). moka bounds the entry count; no timer per entry is kept, which saves
//! memory on caches of 100,000 entries.
//!
//! What is cached, and what the keys cover, is for the layers above: verified tokens
//! (`authn::TokenCache`) and decisions (`key` derives their keys from what the policy reads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use moka::sync::Cache;

use crate::config::CacheSettings;

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

/// Values by digest, each until its deadline.
pub struct DeadlineCache<V> {
    cache: Cache<Digest, Entry<V>, DigestState>,
    max_ttl: Duration,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// Milliseconds since the epoch after which the entry is not used.
    valid_until: u64,
}

/// Values of one policy generation by digest, each until its deadline. Equal values can be
/// interned: entries made from equal policy results share one value.
pub struct DecisionCache<V> {
    entries: DeadlineCache<V>,
    interned: Cache<Digest, V, DigestState>,
    /// The generation whose entries are held: a new one empties the cache.
    generation: AtomicU64,
}

/// SHA-256 of a token.
pub fn token_digest(token: &str) -> Digest {
    sha256(token.as_bytes())
}

pub fn sha256(bytes: &[u8]) -> Digest {
    to_array(digest::digest(&digest::SHA256, bytes))
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

pub fn to_array(d: digest::Digest) -> Digest {
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(d.as_ref()) {
        *o = *b;
    }
    out
}

// === impl DeadlineCache ===

impl<V: Clone + Send + Sync + 'static> DeadlineCache<V> {
    /// A cache of `settings.max_entries`, entries living at most `settings.ttl`;
    /// `selective`: entries may be dropped by a predicate (`invalidate_if`).
    pub fn new(settings: &CacheSettings, selective: bool) -> DeadlineCache<V> {
        let mut builder = Cache::builder().max_capacity(settings.max_entries);
        if selective {
            builder = builder.support_invalidation_closures();
        }
        DeadlineCache {
            cache: builder.build_with_hasher(DigestState),
            max_ttl: settings.ttl.0,
        }
    }

    /// The value for `key`, unless past its deadline (then it is dropped).
    pub fn get(&self, key: &Digest) -> Option<V> {
        let entry = self.cache.get(key)?;
        if now_ms() >= entry.valid_until {
            self.cache.invalidate(key);
            return None;
        }
        Some(entry.value)
    }

    /// Keeps `value` until the earlier of `exp` (seconds since the epoch) and the TTL; not
    /// at all when that is already past (or there is no `exp`).
    pub fn insert(&self, key: Digest, value: V, exp: Option<i64>) {
        if let Some(valid_until) = deadline(exp, self.max_ttl) {
            self.cache.insert(key, Entry { value, valid_until });
        }
    }

    /// Drops every entry whose value matches; everything when the cache was not built
    /// `selective`.
    pub fn invalidate_if(&self, predicate: impl Fn(&V) -> bool + Send + Sync + 'static) {
        if let Err(e) = self
            .cache
            .invalidate_entries_if(move |_, entry| predicate(&entry.value))
        {
            tracing::warn!(error = %e, "Cannot invalidate selectively; clearing the cache");
            self.cache.invalidate_all();
        }
    }

    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
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

impl<V: Clone + Send + Sync + 'static> DecisionCache<V> {
    pub fn new(settings: &CacheSettings) -> DecisionCache<V> {
        DecisionCache {
            entries: DeadlineCache::new(settings, false),
            interned: Cache::builder()
                .max_capacity(4096)
                .time_to_live(settings.ttl.0)
                .build_with_hasher(DigestState),
            generation: AtomicU64::new(0),
        }
    }

    /// The cached value for `key` under policy `generation`. The first read of a new
    /// generation drops every older entry (they can never hit again: the generation is in the
    /// key); other reads only load the generation, so cores do not write one shared line on
    /// every request.
    pub fn get(&self, generation: u64, key: &Digest) -> Option<V> {
        if self.generation.load(Ordering::Acquire) != generation
            && self.generation.swap(generation, Ordering::AcqRel) != generation
        {
            self.entries.invalidate_all();
            self.interned.invalidate_all();
        }
        self.entries.get(key)
    }

    /// Caches `value` until the earlier of `exp` and the TTL. `interned`: a digest of what
    /// the value is a function of (the policy result): entries with equal digests share the
    /// value first cached for it.
    pub fn insert(&self, key: Digest, value: V, interned: Option<Digest>, exp: Option<i64>) {
        let value = match interned {
            Some(digest) => self.interned.get_with(digest, || value),
            None => value,
        };
        self.entries.insert(key, value, exp);
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests;
