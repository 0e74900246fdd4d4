use serde_json::json;

use super::*;
use crate::policy::analysis::Segment::{Index, Key};
use envoy_types::ext_authz::v3::pb::CheckRequest;

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(attribute_context::HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn auth(sub: &str, scopes: &[&str]) -> Authenticated {
    let claims = json!({"sub": sub, "iss": "i", "aud": "a", "scope": scopes.join(" ")});
    let claims = claims.as_object().expect("object");
    Authenticated::from_claims(claims, None, 4).expect("valid")
}

#[test]
fn decision_keys_cover_exactly_the_paths_read() {
    let paths = vec![
        vec![
            Key("attributes".into()),
            Key("request".into()),
            Key("http".into()),
            Key("method".into()),
        ],
        vec![Key("parsed_path".into()), Index(0)],
        vec![Key("token".into()), Key("scopes".into())],
    ];
    let key = |req: &CheckRequest, a: &Authenticated, generation: u64| {
        let input = CheckInput::try_from(req).expect("input");
        DecisionCache::key(generation, &paths, &input, a, &mut None)
    };
    let alice = auth("alice", &["read"]);
    let bob_same_scopes = auth("bob", &["read"]);
    let carol_other_scopes = auth("carol", &["write"]);
    let base = request("GET", "/x/y", &[("x-noise", "1")]);
    let k = key(&base, &alice, 1);
    assert_eq!(
        k,
        key(&request("GET", "/x/z", &[("x-noise", "2")]), &alice, 1),
        "unread parts do not matter"
    );
    assert_eq!(
        k,
        key(&base, &bob_same_scopes, 1),
        "the subject is not read"
    );
    assert_ne!(k, key(&base, &carol_other_scopes, 1), "scopes are read");
    assert_ne!(k, key(&request("POST", "/x/y", &[]), &alice, 1), "method");
    assert_ne!(
        k,
        key(&request("GET", "/w", &[]), &alice, 1),
        "parsed_path[0]"
    );
    assert_ne!(k, key(&base, &alice, 2), "generation");

    // The whole input: every part counts.
    let whole = vec![vec![]];
    let input = CheckInput::try_from(&base).expect("input");
    let other = request("GET", "/x/y", &[("x-noise", "2")]);
    let other_input = CheckInput::try_from(&other).expect("input");
    assert_ne!(
        DecisionCache::key(1, &whole, &input, &alice, &mut None),
        DecisionCache::key(1, &whole, &other_input, &alice, &mut None)
    );
    assert_ne!(
        DecisionCache::key(1, &whole, &input, &alice, &mut None),
        DecisionCache::key(1, &whole, &input, &bob_same_scopes, &mut None)
    );
}

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
        ttl: crate::config::Seconds(ttl),
    }
}

fn in_an_hour() -> i64 {
    i64::try_from(now_ms() / 1000).expect("fits") + 3600
}

#[test]
fn a_decision_past_its_deadline_is_a_miss_and_is_dropped() {
    let cache = DecisionCache::new(&settings(Duration::from_millis(200)));
    let key = [7u8; 32];
    let decision = Arc::new(Decision::deny(crate::decision::DenyReason::Unavailable));
    cache.insert(
        key,
        decision,
        &regorus::Value::from(false),
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
