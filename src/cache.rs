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
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
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

/// A cache's counts, read when `/metrics` is scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    /// Entries removed to stay within `max_entries` (estimated: `DeadlineCache::evictions`).
    pub evictions: u64,
    pub entries: u64,
}

/// Values by digest, each until its deadline.
pub struct DeadlineCache<V> {
    cache: Cache<Digest, Entry<V>, DigestState>,
    max_ttl: Duration,
    /// Entries inserted and removed by this cache's own calls, and the most evictions
    /// reported so far (for `/metrics`; see `evictions`).
    inserted: AtomicU64,
    removed: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Clone)]
struct Entry<V> {
    value: V,
    /// Milliseconds since the epoch after which the entry is not used.
    valid_until: u64,
}

/// Values of one policy generation by digest, each until its deadline. Equal values can be
/// interned: entries made from equal policy results share one value.
///
/// A new generation gets new, empty caches and the old ones are dropped whole (off the
/// serving threads when there is a runtime). moka's `invalidate_all` was not used for this:
/// it only marks entries, which are then removed a batch at a time by maintenance that every
/// later read and write runs; with a policy swap every few seconds the serving threads spent
/// their time there (p50 four times higher in the soak) and memory crept.
pub struct DecisionCache<V> {
    settings: CacheSettings,
    current: ArcSwap<Generation<V>>,
    /// Evictions of the generations replaced so far, and the most reported (a generation's
    /// are added once it is dropped, after the swap: the count never goes down meanwhile).
    retired_evictions: Arc<AtomicU64>,
    reported_evictions: AtomicU64,
    /// Held while a new generation replaces the current one (rarely: once per activation).
    replacing: Mutex<()>,
}

/// The caches of one policy generation.
struct Generation<V> {
    number: u64,
    entries: DeadlineCache<V>,
    interned: Cache<Digest, V, DigestState>,
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
            inserted: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Entries removed to stay within `max_entries`, estimated: new keys inserted, less the
    /// entries this cache removed itself (past their deadline) and those it holds. moka
    /// reports evictions only to an eviction listener, which took a fifth of the cold path's
    /// throughput here (docs/benchmarks.md). Approximate: two threads inserting one new key at
    /// once count it twice; entries dropped with their issuer's key (`invalidate_if`) count as
    /// evicted. Never lower than an earlier answer. Runs moka's pending maintenance first (its
    /// entry count lags until then): call it off the serving threads.
    pub fn evictions(&self) -> u64 {
        self.cache.run_pending_tasks();
        let estimate = self
            .inserted
            .load(Ordering::Relaxed)
            .saturating_sub(self.removed.load(Ordering::Relaxed))
            .saturating_sub(self.cache.entry_count());
        self.evictions
            .fetch_max(estimate, Ordering::Relaxed)
            .max(estimate)
    }

    /// The value for `key`, unless past its deadline (then it is dropped).
    pub fn get(&self, key: &Digest) -> Option<V> {
        let entry = self.cache.get(key)?;
        if now_ms() >= entry.valid_until {
            if self.cache.remove(key).is_some() {
                self.removed.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        Some(entry.value)
    }

    /// Keeps `value` until the earlier of `exp` (seconds since the epoch) and the TTL; not
    /// at all when that is already past (or there is no `exp`).
    pub fn insert(&self, key: Digest, value: V, exp: Option<i64>) {
        if let Some(valid_until) = deadline(exp, self.max_ttl) {
            // A key already held (another thread's miss of the same token or decision) is
            // replaced, not counted again.
            if !self.cache.contains_key(&key) {
                self.inserted.fetch_add(1, Ordering::Relaxed);
            }
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
            settings: settings.clone(),
            current: ArcSwap::from_pointee(Generation::new(0, settings)),
            retired_evictions: Arc::default(),
            reported_evictions: AtomicU64::new(0),
            replacing: Mutex::new(()),
        }
    }

    /// The cached value for `key` under policy `generation`. The first read of a newer
    /// generation replaces the caches (nothing older can hit again: the generation is in the
    /// key); a request still holding an older policy is answered a miss and caches nothing.
    pub fn get(&self, generation: u64, key: &Digest) -> Option<V> {
        let current = self.current.load();
        if current.number == generation {
            return current.entries.get(key);
        }
        if current.number < generation {
            drop(current);
            self.advance(generation);
        }
        None
    }

    /// Caches `value` for `generation` until the earlier of `exp` and the TTL. `interned`: a
    /// digest of what the value is a function of (the policy result): entries with equal
    /// digests share the value first cached for it.
    pub fn insert(
        &self,
        generation: u64,
        key: Digest,
        value: V,
        interned: Option<Digest>,
        exp: Option<i64>,
    ) {
        let current = self.current.load();
        if current.number != generation {
            return;
        }
        let value = match interned {
            Some(digest) => current.interned.get_with(digest, || value),
            None => value,
        };
        current.entries.insert(key, value, exp);
    }

    /// Makes `generation` current when it is newer than the current one.
    fn advance(&self, generation: u64) {
        let _guard = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
        if self.current.load().number >= generation {
            return;
        }
        let old = self
            .current
            .swap(Arc::new(Generation::new(generation, &self.settings)));
        // Counting the old entries' evictions and freeing up to max_entries entries take
        // milliseconds: not on a serving thread.
        let retired = self.retired_evictions.clone();
        let retire = move || {
            retired.fetch_add(old.entries.evictions(), Ordering::Relaxed);
            drop(old);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(retire)),
            Err(_) => retire(),
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.current.load().entries.entry_count()
    }

    /// Entries removed to stay within `max_entries`, in every generation (estimated, as
    /// `DeadlineCache::evictions`).
    pub fn evictions(&self) -> u64 {
        let now = self.retired_evictions.load(Ordering::Relaxed)
            + self.current.load().entries.evictions();
        self.reported_evictions
            .fetch_max(now, Ordering::Relaxed)
            .max(now)
    }

    pub fn run_pending_tasks(&self) {
        self.current.load().entries.run_pending_tasks();
    }
}

// === impl Generation ===

impl<V: Clone + Send + Sync + 'static> Generation<V> {
    fn new(number: u64, settings: &CacheSettings) -> Generation<V> {
        Generation {
            number,
            entries: DeadlineCache::new(settings, false),
            interned: Cache::builder()
                .max_capacity(4096)
                .time_to_live(settings.ttl.0)
                .build_with_hasher(DigestState),
        }
    }
}

#[cfg(test)]
mod tests;
