use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::authn::{Authenticated, TokenCache};

#[test]
fn entries_never_outlive_the_token() {
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
    )
    .expect("fits");
    let now_ms = u64::try_from(now).expect("after 1970") * 1000;
    let max = Duration::from_secs(60);
    // A long-lived token: the TTL bounds the entry.
    let long = deadline(Some(now + 3600), max).expect("some");
    assert!(
        long > now_ms + 59_000 && long <= now_ms + 62_000,
        "{long} vs {now_ms}"
    );
    // A token about to expire: its `exp` bounds the entry.
    assert_eq!(
        deadline(Some(now + 10), max),
        Some((now_ms / 1000 + 10) * 1000)
    );
    assert_eq!(deadline(Some(now - 1), max), None);
    assert_eq!(deadline(None, max), None);
    // A sub-second TTL still caches, briefly.
    let brief = deadline(Some(now + 3600), Duration::from_millis(300)).expect("some");
    assert!(brief <= now_ms + 1_300);
}

fn settings(ttl: Duration) -> CacheSettings {
    CacheSettings {
        enabled: true,
        max_entries: 100,
        ttl: crate::config::Interval(ttl),
    }
}

fn in_an_hour() -> i64 {
    i64::try_from(now_ms() / 1000).expect("fits") + 3600
}

#[test]
fn a_decision_past_its_deadline_is_a_miss_and_is_dropped() {
    let cache = DecisionCache::new(&settings(Duration::from_millis(200)));
    let key = [7u8; 32];
    cache.insert(
        0,
        key,
        Arc::new("a decision"),
        Some([1u8; 32]),
        Some(in_an_hour()),
    );
    assert!(cache.get(0, &key).is_some(), "fresh entry");
    std::thread::sleep(Duration::from_millis(300));
    assert!(cache.get(0, &key).is_none(), "past the TTL");
    cache.run_pending_tasks();
    assert_eq!(
        cache.entry_count(),
        0,
        "dropped on the read that found it stale"
    );
}

#[test]
fn a_token_past_its_deadline_is_a_miss_and_is_dropped() {
    let cache = TokenCache::new(&settings(Duration::from_millis(200)));
    let claims = json!({"sub": "alice", "iss": "i", "aud": "a", "exp": in_an_hour()});
    let auth =
        Authenticated::from_claims(claims.as_object().expect("object"), None, 4).expect("valid");
    let key = token_digest("a token");
    cache.insert(key, Arc::new(auth), Some("k1".into()), [1u8; 32]);
    assert!(cache.get(&key).is_some(), "fresh entry");
    std::thread::sleep(Duration::from_millis(300));
    assert!(cache.get(&key).is_none(), "past the TTL");
    cache.run_pending_tasks();
    assert_eq!(
        cache.entry_count(),
        0,
        "dropped on the read that found it stale"
    );
}

#[test]
fn digest_keys_hash_by_their_leading_bytes() {
    use std::hash::BuildHasher as _;
    let a = [1u8; 32];
    let mut b = a;
    b[0] = 2;
    assert_eq!(DigestState.hash_one(a), DigestState.hash_one(a));
    assert_ne!(DigestState.hash_one(a), DigestState.hash_one(b));
}

/// moka admits a new entry into a full cache only when its estimated frequency beats the
/// entry it would evict (TinyLFU). Decisions that can never hit — a policy reading a value
/// that is new on every request — are seen once each: a flood of them, ten times the
/// capacity, with the useful entries read as often as a busy sidecar reads them, leaves the
/// useful entries in place.
#[test]
fn one_time_keys_do_not_evict_useful_decisions() {
    let exp = Some(unix_now() + 3600);
    let mut config = settings(Duration::from_secs(600));
    config.max_entries = 1_000;
    let cache = DecisionCache::<u32>::new(&config);
    let useful: Vec<Digest> = (0..500)
        .map(|i| sha256(format!("useful-{i}").as_bytes()))
        .collect();
    let read = |k: &Digest| {
        if cache.get(1, k).is_none() {
            cache.insert(1, *k, 1, None, exp);
        }
    };
    for _ in 0..4 {
        useful.iter().for_each(read);
    }
    cache.run_pending_tasks();
    // The flood: 10,000 keys seen once, one useful read for every four of them.
    let (mut hits, mut reads) = (0, 0);
    for j in 0..10_000 {
        read(&sha256(format!("once-{j}").as_bytes()));
        if j % 4 == 0 {
            let k = &useful[(j / 4) % useful.len()];
            reads += 1;
            hits += usize::from(cache.get(1, k).is_some());
            read(k);
        }
    }
    cache.run_pending_tasks();
    let kept = useful.iter().filter(|k| cache.get(1, k).is_some()).count();
    eprintln!(
        "useful decisions kept: {kept} of 500; hit ratio of useful reads during the flood: {:.3}; entries: {}",
        hits as f64 / reads as f64,
        cache.entry_count()
    );
    assert!(kept >= 450, "{kept} of 500 kept");
    assert!(hits * 10 >= reads * 9, "{hits} hits of {reads}");
}

/// A new policy generation starts from empty caches; a request still on the older policy
/// neither reads the newer entries nor writes into them, and never sends the cache back.
#[test]
fn a_new_generation_starts_empty_and_older_requests_do_not_go_back() {
    let cache = DecisionCache::<u32>::new(&settings(Duration::from_secs(60)));
    let key = [9u8; 32];
    assert!(cache.get(1, &key).is_none());
    cache.insert(1, key, 1, None, Some(in_an_hour()));
    assert_eq!(cache.get(1, &key), Some(1));

    assert!(cache.get(2, &key).is_none(), "generation 2 starts empty");
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count(), 0);

    // A straggler on generation 1: a miss, and what it caches goes nowhere.
    assert!(cache.get(1, &key).is_none());
    cache.insert(1, key, 1, None, Some(in_an_hour()));
    assert!(
        cache.get(2, &key).is_none(),
        "generation 1's insert was dropped"
    );
    cache.insert(2, key, 2, None, Some(in_an_hour()));
    assert_eq!(cache.get(2, &key), Some(2), "still generation 2");
}

#[test]
fn evictions_are_the_entries_moka_dropped_to_stay_within_bounds() {
    let exp = Some(unix_now() + 600);
    let cache = DeadlineCache::<u32>::new(
        &CacheSettings {
            max_entries: 10,
            ..settings(Duration::from_secs(60))
        },
        false,
    );
    for i in 0..10u32 {
        cache.insert(sha256(&i.to_le_bytes()), i, exp);
    }
    assert_eq!(cache.evictions(), 0, "within bounds nothing is evicted");
    for i in 10..50u32 {
        cache.insert(sha256(&i.to_le_bytes()), i, exp);
    }
    cache.run_pending_tasks();
    let evicted = cache.evictions();
    assert_eq!(evicted + cache.entry_count(), 50);
    assert!(evicted >= 40, "{evicted}");

    // Decision caches keep counting across generations.
    let decisions = DecisionCache::<u32>::new(&CacheSettings {
        max_entries: 10,
        ..settings(Duration::from_secs(60))
    });
    for i in 0..30u32 {
        decisions.insert(0, sha256(&i.to_le_bytes()), i, None, exp);
    }
    let before = decisions.evictions();
    assert!(before >= 20, "{before}");
    assert_eq!(decisions.get(1, &sha256(b"x")), None);
    assert!(decisions.evictions() >= before);
}

/// Seconds since the epoch.
fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("time")
            .as_secs(),
    )
    .expect("fits")
}
